import { readFile, rename } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { VmPoolError, isVmPoolError } from '../../errors.js'
import { quoteShellArg } from '../../transport/shell.js'
import type { SshTransport } from '../../transport/ssh-transport.js'
import { createDebug } from '../../util/debug.js'
import { isProcessAlive } from '../../util/process-info.js'
import { scaleTimeout, sleep } from '../../util/timeouts.js'
import { waitForBoot } from './boot-wait.js'
import { freezeDisk } from './disk-overlay.js'
import type { QemuMachine } from './qemu-command.js'
import { launchQemu, stopQemuOf } from './qemu-process.js'
import { ensureSnapshot, getSnapshotSlot, invalidateSnapshot, resumeRestoredGuest, saveGuestState, type SnapshotBuilder, type SnapshotManifest, type SnapshotSlot } from './qemu-snapshot.js'
import { QemuVmDir, type QemuProcessFile } from './qemu-vm-dir.js'
import { makeGuestTransport } from './qemu-vm.js'
import { identityCommand, type StartedQemu, type StartRequest, type StartStrategy, type StrategyContext } from './start-strategy.js'

/** From starting a QEMU that loads a snapshot to the first finished command in the restored guest (about 1 s here under TCG). */
export const RESTORE_TIMEOUT_MS = 60_000

/** What bounds a restore: RESTORE_TIMEOUT_MS (scaled), or the boot timeout when that is shorter (locally and on a VM host). */
export function restoreTimeout(boot: { bootTimeoutMs: number; bootTimeoutFromOption: boolean }): { timeoutName: string; timeoutMs: number; timeoutFromOption: boolean } {
  const restoreMs = scaleTimeout(RESTORE_TIMEOUT_MS)
  if (restoreMs <= boot.bootTimeoutMs) return { timeoutName: 'RESTORE_TIMEOUT_MS', timeoutMs: restoreMs, timeoutFromOption: false }
  return { timeoutName: 'BOOT_TIMEOUT_MS', timeoutMs: boot.bootTimeoutMs, timeoutFromOption: boot.bootTimeoutFromOption }
}
/** After the template's SSH session closed, time for the guest's dropbear to end that session before the save. */
const SNAPSHOT_SETTLE_MS = 300

const debug = createDebug('vm-pool:qemu')

/**
 * Whether a failed restore proves the snapshot broken, and why; undefined when it does not. Proven:
 * QEMU exited (it rejected the state while loading, or the guest died right after it), QEMU reported a
 * wrong state after loading, or the guest is not the image's guest (another host key, the key refused).
 * Not proven: a timeout (a slow, busy machine), a QEMU that failed to start at all.
 */
export function judgeRestoreFailure(error: unknown, facts: { qemuExited: boolean }): string | undefined {
  const firstLine = (error as Error).message.split('\n')[0]!
  // details.qemuExited: QEMU was gone before its pid could even be read (launchQemu).
  if (facts.qemuExited || (isVmPoolError(error) && error.details?.qemuExited === true)) return `QEMU exited: ${firstLine}`
  if (isVmPoolError(error, 'VMPOOL_SNAPSHOT_INVALID') || isVmPoolError(error, 'VMPOOL_HOST_KEY_MISMATCH') || isVmPoolError(error, 'VMPOOL_AUTH_FAILED')) return firstLine
  return undefined
}

/**
 * Start a VM from its machine's snapshot (built first when missing or stale): QEMU loads the saved
 * guest, `cont` resumes it, the first command gives it its identity. A restore proven broken
 * (`judgeRestoreFailure`) deletes that snapshot and rebuilds it once; a timeout keeps it, since the
 * next, less busy restore may well work (docs/qemu.md, "Snapshots").
 */
export class SnapshotRestoreStrategy implements StartStrategy {
  readonly kind = 'snapshot-restore'
  readonly #context: StrategyContext
  readonly #machine: QemuMachine
  readonly #snapshotDir: string
  readonly #template: StartStrategy

  /** `template`: how the guest to save is booted (a cold boot whose first command is `true`). */
  constructor(context: StrategyContext, machine: QemuMachine, options: { snapshotDir: string; template: StartStrategy }) {
    this.#context = context
    this.#machine = machine
    this.#snapshotDir = options.snapshotDir
    this.#template = options.template
  }

  async start(request: StartRequest): Promise<StartedQemu> {
    const slot = await getSnapshotSlot({ snapshotDir: this.#snapshotDir, machine: this.#machine, qemuBinary: this.#context.binary })
    for (let attempt = 1; ; attempt++) {
      const snapshot = await ensureSnapshot(slot, this.#buildTemplate(slot, request.vm))
      let qemuExited = false
      try {
        return await this.#restore(slot, snapshot, request, () => (qemuExited = true))
      } catch (error) {
        const broken = judgeRestoreFailure(error, { qemuExited })
        if (broken === undefined) throw error
        await invalidateSnapshot(slot, snapshot.id, broken)
        if (attempt >= 2) {
          throw new VmPoolError({ code: 'VMPOOL_SNAPSHOT_INVALID', provider: 'qemu', operation: 'create', vm: request.vm, message: `restoring a fresh snapshot failed too (${broken}); it was deleted`, hint: 'start without snapshots to see whether the image boots: qemuProvider({ snapshot: false })', cause: error })
        }
        debug('%s: restore from snapshot %s failed (%s): deleted it, rebuilding', request.vm, snapshot.id, broken)
      }
    }
  }

  async #restore(slot: SnapshotSlot, snapshot: SnapshotManifest, request: StartRequest, onQemuExited: () => void): Promise<StartedQemu> {
    const { dir, vm } = request
    const timeout = restoreTimeout(this.#context)
    const startedAt = performance.now()
    let identity: QemuProcessFile | undefined
    let transport: SshTransport | undefined
    try {
      const diskBacking = snapshot.diskFile === undefined ? undefined : join(slot.dir, snapshot.diskFile)
      identity = await launchQemu({ binary: this.#context.binary, machine: this.#machine, dir, vm, incoming: `exec:cat ${quoteShellArg(join(slot.dir, snapshot.stateFile))}`, preferredPort: request.preferredPort, pathHint: this.#context.pathHint, diskBacking })
      await resumeRestoredGuest({ qmpSocket: dir.path('qmp'), identity, deadline: startedAt + timeout.timeoutMs, timeoutName: timeout.timeoutName, timeoutMs: timeout.timeoutMs, vm })
      const image = this.#machine.image
      transport = makeGuestTransport({ vm, port: identity.port, username: image.username, hostKey: image.hostKey, privateKey: request.privateKey, maxChannels: image.sshMaxSessions, booting: true })
      await waitForBoot({ vm, transport, identity, serialLog: dir.path('serial'), ...timeout, startedAt, bootMarker: undefined, readyCommand: () => identityCommand(vm, true), context: ` (restored from snapshot ${snapshot.id})` })
      return { identity, transport, bootMs: Math.round(performance.now() - startedAt), restoredFrom: snapshot.id }
    } catch (error) {
      // Judged before we stop it: did QEMU end on its own?
      if (identity !== undefined && !isProcessAlive(identity)) onQemuExited()
      await transport?.close()
      await stopQemuOf(dir, false)
      await dir.removeInstanceFiles()
      throw error
    }
  }

  /**
   * Boot a template, save it into the slot, shut it down (ensureSnapshot holds the slot lock around this).
   * A disk image's template writes to its own overlay; stopped for the save, that overlay is the disk the
   * saved RAM belongs to: it becomes the snapshot's frozen disk.
   */
  #buildTemplate(slot: SnapshotSlot, vm: string): SnapshotBuilder {
    return async ({ stateFile, workDir, diskFile }) => {
      const dir = new QemuVmDir(workDir, `snapshot-${basename(slot.dir)}`)
      // A builder that died mid-build (SIGKILL) may have left its template running: it is ours to end now.
      await stopQemuOf(dir, false)
      debug('%s: no usable snapshot in %s, booting a template to save', vm, slot.dir)
      // Once per machine shape, and slow (a boot plus a ~90 MB save): say so, or the first create looks hung.
      const { cpus, memoryMiB, accel } = this.#machine
      process.stderr.write(`vm-pool: [qemu] building a snapshot for a new machine shape (${basename(this.#machine.image.dir)}, ${cpus} cpu, ${memoryMiB} MiB, ${accel}): once, about 10 s and ~90 MB in ${slot.dir}\n`)
      const privateKey = await readFile(this.#machine.image.clientKey)
      const { transport, bootMs } = await this.#template.start({ vm, dir, privateKey, context: ` (the snapshot template in ${slot.dir})` })
      let saveMs: number
      try {
        // Our SSH session must be over before the save, or every clone starts with a dead session in it.
        await transport.close()
        await sleep(SNAPSHOT_SETTLE_MS)
        const saveStarted = performance.now()
        await saveGuestState(dir.path('qmp'), stateFile)
        saveMs = Math.round(performance.now() - saveStarted)
      } finally {
        await transport.close()
        await stopQemuOf(dir, true)
      }
      if (this.#machine.image.disk === undefined) return { bootMs, saveMs }
      // QEMU is gone: nothing writes to the overlay any more.
      await rename(dir.path('disk'), diskFile)
      await freezeDisk(diskFile)
      return { bootMs, saveMs, disk: true }
    }
  }
}
