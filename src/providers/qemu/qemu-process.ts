/**
 * The QEMU process of a VM dir: launch it detached (a free port, retried when a concurrent start took
 * it), stop it (QMP `quit`, then SIGKILL after DELETE_GRACE_MS) and wait until it is gone. Stopping
 * covers every way a QEMU of that dir can be known: `process.json`, QEMU's own pid file, and its
 * command line (docs/qemu.md, "Leaks").
 */
import { hostname } from 'node:os'
import { VmPoolError } from '../../errors.js'
import { runProcess } from '../../transport/process-runner.js'
import { createDebug } from '../../util/debug.js'
import { getProcessStartTime, isProcessAlive, type ProcessIdentity } from '../../util/process-info.js'
import { scaleTimeout, sleep } from '../../util/timeouts.js'
import { readSerialTail } from './boot-wait.js'
import { findFreeLoopbackPort } from './free-port.js'
import { buildQemuArgs, type QemuMachine } from './qemu-command.js'
import { findQemuByCommandLine, identifyQemu } from './qemu-process-scan.js'
import type { QemuProcessFile, QemuVmDir } from './qemu-vm-dir.js'
import { runQmpCommand } from './qmp-client.js'

/** How long `qemu -daemonize` may take to set the machine up and return. */
export const QEMU_START_TIMEOUT_MS = 30_000
/** After a QMP `quit`, how long QEMU may take to exit before it is killed. */
export const DELETE_GRACE_MS = 5_000
/** After SIGKILL, how long until the process must be gone. */
export const KILL_WAIT_MS = 5_000
/** New ports tried when another QEMU took the chosen one first. */
const PORT_ATTEMPTS = 5
/** Pause between liveness checks while waiting for an exit. */
const EXIT_POLL_INTERVAL_MS = 50

const debug = createDebug('vm-pool:qemu')

export interface LaunchOptions {
  binary: string
  machine: QemuMachine
  dir: QemuVmDir
  /** The VM this start is for, in messages. */
  vm: string
  /** `-incoming` source, for a restore. */
  incoming?: string
  /** Tried first, so a reset VM keeps its address. */
  preferredPort?: number
  /** Where to shorten the path when the monitor socket's path is too long. */
  pathHint: string
}

/** Start a detached QEMU and record its identity in `process.json`. On any failure no QEMU of `dir` is left running. */
export async function launchQemu(options: LaunchOptions): Promise<QemuProcessFile> {
  const { dir, machine } = options
  dir.assertSocketPathFits({ vm: options.vm, hint: options.pathHint })
  for (let attempt = 1; ; attempt++) {
    const port = attempt === 1 && options.preferredPort ? options.preferredPort : await findFreeLoopbackPort()
    const args = buildQemuArgs(machine, { name: dir.instanceName, sshPort: port, pidFile: dir.path('pid'), serialLog: dir.path('serial'), qmpSocket: dir.path('qmp'), daemonize: true, incoming: options.incoming })
    debug('starting %s: %s %s', dir.instanceName, options.binary, args.join(' '))
    const started = await runProcess(options.binary, args, { timeoutMs: scaleTimeout(QEMU_START_TIMEOUT_MS), env: process.env, provider: 'qemu', vm: options.vm })
    if (started.exitCode === 0) {
      const pid = await dir.readPidFile()
      // QEMU deletes its pid file when it exits: it daemonized, then ended at once (a restore whose saved state it rejected).
      // It may still be listed for a moment after the pid file went: wait for that exit instead of calling it a new QEMU.
      if (pid === undefined && (await qemuOfDirExits(dir))) {
        throw new VmPoolError({
          code: 'VMPOOL_CREATE_FAILED',
          provider: 'qemu',
          operation: 'create',
          vm: options.vm,
          message: `QEMU exited right after it started${options.incoming ? ' (while loading the saved guest state)' : ''}; the guest's console ended with:\n${await readSerialTail(dir.path('serial'))}`,
          details: { qemuExited: true, accel: machine.accel, restore: options.incoming !== undefined },
        })
      }
      try {
        if (pid === undefined) throw new Error(`QEMU started but ${dir.path('pid')} holds no pid`)
        const identity: QemuProcessFile = { pid, host: hostname(), startTime: getProcessStartTime(pid), port, accel: machine.accel }
        await dir.writeProcess(identity)
        return identity
      } catch (error) {
        // Without process.json nobody else could stop this QEMU by the usual way: stop it now.
        await stopQemuOf(dir, false).catch(() => {})
        throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: 'qemu', operation: 'create', vm: options.vm, message: `QEMU started but could not be recorded in ${dir.dir}: ${(error as Error).message}`, cause: error })
      }
    }
    // A start that timed out may have left its daemon behind.
    if (started.timedOut) await stopQemuOf(dir, false).catch(() => {})
    const portTaken = /host forwarding|Address already in use|Could not set up host forwarding/i.test(started.stderr)
    if (portTaken && attempt < PORT_ATTEMPTS) {
      debug('%s: port %d was taken by someone else, trying another', dir.instanceName, port)
      continue
    }
    throw new VmPoolError({
      code: 'VMPOOL_CREATE_FAILED',
      provider: 'qemu',
      operation: 'create',
      vm: options.vm,
      message: `QEMU failed to start (exit code ${started.exitCode}${started.timedOut ? ', QEMU_START_TIMEOUT_MS ran out' : ''}): ${started.stderr.trim() || 'no error output'}`,
      details: { accel: machine.accel, image: machine.image.dir, restore: options.incoming !== undefined },
    })
  }
}

/**
 * Stop every QEMU of `dir`: the one `process.json` names, the one QEMU's own pid file names (its creator
 * may have died before writing process.json), and any process whose command line names this dir's
 * instance and pid file (the files may be gone). `graceful`: QMP `quit` first. Returns once all of them are gone.
 */
export async function stopQemuOf(dir: QemuVmDir, graceful: boolean): Promise<void> {
  const found = new Map<number, ProcessIdentity>()
  const recorded = await dir.readProcess()
  if (recorded && isProcessAlive(recorded)) found.set(recorded.pid, recorded)
  const pid = await dir.readPidFile()
  const byPidFile = pid === undefined ? undefined : identifyQemu(pid, dir.commandLine())
  if (byPidFile && !found.has(byPidFile.pid)) found.set(byPidFile.pid, byPidFile)
  for (const ref of findQemuByCommandLine(dir.commandLine())) if (!found.has(ref.pid)) found.set(ref.pid, ref)
  await Promise.all([...found.values()].map((identity) => stopQemu(identity, dir.path('qmp'), graceful)))
}

/** QMP `quit` first (when graceful), then SIGKILL after DELETE_GRACE_MS; returns once the process is gone. */
export async function stopQemu(identity: ProcessIdentity, qmpSocket: string, graceful: boolean): Promise<void> {
  if (!isProcessAlive(identity)) return
  if (graceful) {
    try {
      await runQmpCommand(qmpSocket, 'quit')
      if (await waitForExit(identity, scaleTimeout(DELETE_GRACE_MS))) return
      debug('pid %d ignored QMP quit for %d ms: killing it', identity.pid, DELETE_GRACE_MS)
    } catch (error) {
      debug('QMP quit for pid %d failed (%s): killing it', identity.pid, (error as Error).message)
    }
  }
  // Checked again right before the signal: a pid that changed hands meanwhile is not ours.
  if (!isProcessAlive(identity)) return
  try {
    process.kill(identity.pid, 'SIGKILL')
  } catch {
    // exited in the meantime
  }
  if (!(await waitForExit(identity, scaleTimeout(KILL_WAIT_MS)))) {
    throw new VmPoolError({ code: 'VMPOOL_DELETE_FAILED', provider: 'qemu', operation: 'delete', message: `QEMU pid ${identity.pid} is still alive ${KILL_WAIT_MS} ms after SIGKILL (KILL_WAIT_MS)`, hint: 'check the process (ps -p PID); is it stuck in the kernel?' })
  }
}

/** Whether every QEMU still listed for `dir` (its pid file already gone) exits within KILL_WAIT_MS. */
async function qemuOfDirExits(dir: QemuVmDir): Promise<boolean> {
  const exiting = findQemuByCommandLine(dir.commandLine())
  for (const identity of exiting) if (!(await waitForExit(identity, scaleTimeout(KILL_WAIT_MS)))) return false
  return true
}

async function waitForExit(identity: ProcessIdentity, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs
  while (isProcessAlive(identity)) {
    if (performance.now() > deadline) return false
    await sleep(EXIT_POLL_INTERVAL_MS)
  }
  return true
}
