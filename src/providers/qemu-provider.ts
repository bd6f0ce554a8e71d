import { randomBytes } from 'node:crypto'
import { copyFile, mkdir, open, readdir, readFile, rm } from 'node:fs/promises'
import { hostname } from 'node:os'
import { basename, join, resolve } from 'node:path'
import { z } from 'zod'
import { formatZodError } from '../config/zod-error.js'
import { VmPoolError, VmPoolTimeoutError, invalidOptions, isVmPoolError } from '../errors.js'
import { runProcess } from '../transport/process-runner.js'
import { quoteShellArg } from '../transport/shell.js'
import { SshTransport, type ExecBufferResult } from '../transport/ssh-transport.js'
import { createDebug } from '../util/debug.js'
import { writeFileAtomic } from '../util/fs-atomic.js'
import { getProcessStartTime, isProcessAlive, type ProcessIdentity } from '../util/process-info.js'
import { getStateDir } from '../util/state-dir.js'
import { scaleTimeout, sleep } from '../util/timeouts.js'
import { validateVmName } from '../util/vm-name.js'
import { probeAccel, type AccelProbeResult } from './qemu/accel-probe.js'
import { findQemuBinary, buildQemuArgs, type QemuAccel, type QemuMachine } from './qemu/qemu-command.js'
import { DEFAULT_IMAGE_NAME, getImageDir, loadImage, type ResolvedImage } from './qemu/qemu-image.js'
import { findFreeLoopbackPort } from './qemu/free-port.js'
import { runQmpCommand } from './qemu/qmp-client.js'
import { describeSnapshotState, ensureSnapshot, getSnapshotSlot, invalidateSnapshot, readSnapshot, resumeRestoredGuest, saveGuestState, type SnapshotBuilder, type SnapshotSlot } from './qemu/qemu-snapshot.js'
import type { ExecOptions, ExecResult, JsonValue, ProviderProbe, Vm, VmInfo, VmProvider, VmRecord, VmSpec } from './vm-provider.js'

const PROVIDER = 'qemu'

/** From QEMU start to a command running in the guest (TCG boot is ~4-9 s alone, slower with several VMs per core). */
export const BOOT_TIMEOUT_MS = 120_000
/** How long `qemu -daemonize` may take to set the machine up and return. */
export const QEMU_START_TIMEOUT_MS = 30_000
/** After a QMP `quit`, how long QEMU may take to exit before it is killed. */
export const DELETE_GRACE_MS = 5_000
/** After SIGKILL, how long until the process must be gone. */
export const KILL_WAIT_MS = 5_000
/** One SSH attempt while the guest boots (the handshake runs on an emulated CPU). */
export const BOOT_SSH_ATTEMPT_TIMEOUT_MS = 15_000
/**
 * From starting a QEMU that loads a snapshot to the first finished command in the restored guest
 * (about 1 s here under TCG). A restore that takes longer is treated as broken: the snapshot is rebuilt.
 */
export const RESTORE_TIMEOUT_MS = 60_000
/** After the template's SSH session closed, time for the guest's dropbear to end that session before the save. */
const SNAPSHOT_SETTLE_MS = 300
/** Pause between boot checks. */
const BOOT_POLL_INTERVAL_MS = 200
/** New ports tried when another QEMU took the chosen one first. */
const PORT_ATTEMPTS = 5
const SERIAL_TAIL_LINES = 25
/** sun_path is 108 bytes on Linux. */
const MAX_UNIX_SOCKET_PATH = 107
/**
 * Exec channels per connection to the guest. Dropbear 2022.83 (Debian 12) aborts the whole
 * connection ("Failed assertion (common-channel.c:705): `!channel->sent_close'") when several
 * channels close at once, so concurrent execs on one VM queue on a single channel instead.
 */
const GUEST_MAX_CHANNELS = 1

const debug = createDebug('vm-pool:qemu')

export const qemuProviderOptionsSchema = z
  .object({
    /** An image name under `imageDir`, or an absolute path to an image directory. @default 'minimal' */
    image: z.string().min(1).default(DEFAULT_IMAGE_NAME),
    /** @default `VM_POOL_IMAGE_DIR`, else `<VM_POOL_STATE_DIR or ~/.cache/vm-pool>/images` */
    imageDir: z.string().min(1).optional(),
    /** vCPUs per VM. @default 1 */
    cpus: z.number().int().min(1).max(64).default(1),
    /** Guest memory. @default 256 */
    memoryMiB: z.number().int().min(64).max(1_048_576).default(256),
    /** `auto` uses KVM only when a test boot proves it works, else TCG. @default 'auto' */
    accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
    /** VM state dirs live in `<stateDir>/qemu/<name>/`. @default `VM_POOL_STATE_DIR` or `~/.cache/vm-pool` */
    stateDir: z.string().min(1).optional(),
    /** @default `qemu-system-x86_64` on PATH */
    qemuBinary: z.string().min(1).optional(),
    /** @default BOOT_TIMEOUT_MS scaled by VM_POOL_TIMEOUT_SCALE */
    bootTimeoutMs: z.number().int().positive().optional(),
    /**
     * `auto`: boot the image once, save the running guest, and start every VM by restoring that
     * state (about 1 s instead of a boot; images with a `disk` always boot). Also enables
     * `reset(name)` (`keepWarm: { reset: 'snapshot' }`). `false`: every VM boots. @default 'auto'
     */
    snapshot: z.union([z.literal('auto'), z.literal(false)]).default('auto'),
    /** Where snapshots live, one dir per image + machine shape. @default `<imageDir>/.snapshots` */
    snapshotDir: z.string().min(1).optional(),
  })
  .strict()

export type QemuProviderOptions = z.input<typeof qemuProviderOptionsSchema>

/** `record.data` of a QEMU VM: how any process reaches it. No secrets: the key is a path. */
const qemuRecordDataSchema = z.object({
  host: z.string(),
  port: z.number().int(),
  username: z.string(),
  hostKey: z.string(),
  keyPath: z.string(),
  vmDir: z.string(),
  pid: z.number().int(),
  accel: z.enum(['kvm', 'tcg']),
  image: z.string(),
  /** From QEMU start to the first finished command. */
  bootMs: z.number().optional(),
  /** The snapshot id the VM was restored from; absent for a cold boot. */
  restoredFrom: z.string().optional(),
})

interface ProcessFile extends ProcessIdentity {
  port: number
  accel: QemuAccel
}

/** A QEMU VM; `execBuffer` returns stdout as bytes. */
export interface QemuVm extends Vm {
  execBuffer(command: string | string[], options?: ExecOptions): Promise<ExecBufferResult>
  putFile(path: string, data: string | Buffer): Promise<void>
  getFile(path: string): Promise<Buffer>
  close(): Promise<void>
}

export interface QemuProvider extends VmProvider {
  connect(record: VmRecord): Promise<QemuVm>
  /**
   * Present unless `snapshot: false`: put the VM back to the snapshot state (its QEMU is replaced by a
   * fresh restore; same name and state dir, the same port when it is still free). Returns the new record.
   */
  reset?(name: string): Promise<VmRecord>
  probe(): Promise<ProviderProbe>
  close(): Promise<void>
}

/**
 * Real VMs with QEMU: KVM when it works, TCG emulation otherwise; user-mode networking with the
 * guest's SSH forwarded to a loopback port; one detached QEMU per VM that outlives the creating
 * process (VMs are shared between processes), found again through `<stateDir>/qemu/<name>/`.
 */
export function qemuProvider(options: QemuProviderOptions = {}): QemuProvider {
  const parsed = qemuProviderOptionsSchema.safeParse(options)
  if (!parsed.success) throw invalidOptions(`invalid qemuProvider options: ${formatZodError(parsed.error, options)}`, { provider: PROVIDER })
  const config = Object.freeze(parsed.data)
  const root = () => join(getStateDir(config.stateDir), 'qemu')
  const vmDir = (name: string) => join(root(), name)
  const imageDir = () => getImageDir(config.imageDir)
  const snapshotDir = () => (config.snapshotDir ? resolve(config.snapshotDir) : join(imageDir(), '.snapshots'))
  const bootTimeoutMs = () => config.bootTimeoutMs ?? scaleTimeout(BOOT_TIMEOUT_MS)
  /** Transports that proved the boot, handed to the first `connect` in this process (saves a handshake). */
  const bootTransports = new Map<string, SshTransport>()

  const requireBinary = async (operation: string): Promise<string> => {
    const binary = await findQemuBinary(config.qemuBinary)
    if (binary) return binary
    throw new VmPoolError({
      code: 'VMPOOL_PROVIDER_UNAVAILABLE',
      provider: PROVIDER,
      operation,
      message: config.qemuBinary ? `QEMU binary ${config.qemuBinary} is not executable` : 'qemu-system-x86_64 was not found on PATH',
      hint: 'install it: sudo apt-get install qemu-system-x86 (or set the qemuBinary option)',
    })
  }

  const resolveAccel = async (binary: string, image: ResolvedImage): Promise<AccelProbeResult> => {
    if (config.accel !== 'auto') return { accel: config.accel, reason: `accel: '${config.accel}' was chosen in the options` }
    return probeAccel({ qemuBinary: binary, kernel: image.kernel, cacheDir: root() })
  }

  /** The machine a spec asks for: create and reset must agree exactly (a restore needs the same machine). */
  const resolveMachine = async (spec: Pick<VmSpec, 'image' | 'cpus' | 'memoryMiB'>, binary: string): Promise<QemuMachine> => {
    const image = await loadImage(spec.image ?? config.image, imageDir())
    const { accel } = await resolveAccel(binary, image)
    return { accel, cpus: spec.cpus ?? config.cpus, memoryMiB: Math.max(spec.memoryMiB ?? config.memoryMiB, image.minMemoryMiB), image }
  }

  /** Snapshots need all guest state in RAM: an image with a disk writes to an overlay the saved state does not contain. */
  const canSnapshot = (machine: QemuMachine): boolean => config.snapshot === 'auto' && machine.image.disk === undefined && machine.image.kernel !== undefined

  const getSlot = (machine: QemuMachine, binary: string): Promise<SnapshotSlot> => getSnapshotSlot({ snapshotDir: snapshotDir(), machine, qemuBinary: binary })

  /**
   * Start a detached QEMU for `instance` (a free port, retried when a concurrent start took it; the
   * preferred port first, so a reset VM keeps its address) and record its identity in `<dir>/process.json`.
   */
  const launch = async (binary: string, machine: QemuMachine, options: { name: string; dir: string; vm: string; incoming?: string; preferredPort?: number }): Promise<ProcessFile> => {
    const pidFile = join(options.dir, 'qemu.pid')
    for (let attempt = 1; ; attempt++) {
      const port = attempt === 1 && options.preferredPort ? options.preferredPort : await findFreeLoopbackPort()
      const args = buildQemuArgs(machine, { name: options.name, sshPort: port, pidFile, serialLog: join(options.dir, 'serial.log'), qmpSocket: join(options.dir, 'qmp.sock'), daemonize: true, incoming: options.incoming })
      debug('starting %s: %s %s', options.name, binary, args.join(' '))
      const started = await runProcess(binary, args, { timeoutMs: scaleTimeout(QEMU_START_TIMEOUT_MS), env: process.env, provider: PROVIDER, vm: options.vm })
      if (started.exitCode === 0) {
        const pid = Number((await readFile(pidFile, 'utf8')).trim())
        const identity: ProcessFile = { pid, host: hostname(), startTime: getProcessStartTime(pid), port, accel: machine.accel }
        await writeFileAtomic(join(options.dir, 'process.json'), JSON.stringify(identity), 0o644)
        return identity
      }
      const portTaken = /host forwarding|Address already in use|Could not set up host forwarding/i.test(started.stderr)
      if (portTaken && attempt < PORT_ATTEMPTS) {
        debug('%s: port %d was taken by someone else, trying another', options.name, port)
        continue
      }
      throw new VmPoolError({
        code: 'VMPOOL_CREATE_FAILED',
        provider: PROVIDER,
        operation: 'create',
        vm: options.vm,
        message: `QEMU failed to start (exit code ${started.exitCode}${started.timedOut ? ', QEMU_START_TIMEOUT_MS ran out' : ''}): ${started.stderr.trim() || 'no error output'}`,
        details: { accel: machine.accel, image: machine.image.dir, restore: options.incoming !== undefined },
      })
    }
  }

  const makeTransport = (vm: string, port: number, privateKey: Buffer, image: ResolvedImage): SshTransport =>
    new SshTransport({ host: '127.0.0.1', port, username: image.username, privateKey, hostKey: image.hostKey, readyTimeoutMs: scaleTimeout(BOOT_SSH_ATTEMPT_TIMEOUT_MS), maxChannels: GUEST_MAX_CHANNELS, provider: PROVIDER, vm })

  /** A cold boot: QEMU boots the kernel, the guest prints its boot marker, SSH answers `readyCommand`. */
  const bootCold = async (binary: string, machine: QemuMachine, options: { name: string; dir: string; vm: string; privateKey: Buffer; readyCommand: () => string; context?: string }): Promise<Started> => {
    const bootStarted = performance.now()
    const identity = await launch(binary, machine, options)
    const transport = makeTransport(options.vm, identity.port, options.privateKey, machine.image)
    try {
      await waitForBoot({ name: options.vm, transport, identity, serialLog: join(options.dir, 'serial.log'), bootTimeoutMs: bootTimeoutMs(), bootStarted, bootMarker: machine.image.bootMarker, readyCommand: options.readyCommand, context: options.context })
    } catch (error) {
      await transport.close()
      await stopProcess(identity, join(options.dir, 'qmp.sock'), false)
      throw error
    }
    return { identity, transport, bootMs: Math.round(performance.now() - bootStarted) }
  }

  /** Boot a template VM, save it into the slot, shut it down (ensureSnapshot holds the slot lock around this). */
  const buildSnapshot = (binary: string, machine: QemuMachine, slot: SnapshotSlot, vm: string): SnapshotBuilder => async ({ stateFile, workDir }) => {
    // A builder that died mid-build (SIGKILL) may have left its template running: it is ours to end now.
    const leftover = await readProcessFile(workDir)
    if (leftover) await stopProcess(leftover, join(workDir, 'qmp.sock'), false)
    const qmpSocket = join(workDir, 'qmp.sock')
    if (Buffer.byteLength(qmpSocket) > MAX_UNIX_SOCKET_PATH) {
      throw invalidOptions(`the snapshot dir path is too long for QEMU's monitor socket (${qmpSocket} is over ${MAX_UNIX_SOCKET_PATH} bytes)`, { provider: PROVIDER, vm, hint: 'use a shorter snapshotDir (or VM_POOL_IMAGE_DIR)' })
    }
    debug('%s: no usable snapshot in %s, booting a template to save', vm, slot.dir)
    const privateKey = await readFile(machine.image.clientKey)
    const { identity, transport, bootMs } = await bootCold(binary, machine, { name: `snapshot-${basename(slot.dir)}`, dir: workDir, vm, privateKey, readyCommand: () => 'true', context: ` (the snapshot template in ${slot.dir})` })
    try {
      // Our SSH session must be over before the save, or every clone starts with a dead session in it.
      await transport.close()
      await sleep(SNAPSHOT_SETTLE_MS)
      const saveStarted = performance.now()
      await saveGuestState(qmpSocket, stateFile)
      return { bootMs, saveMs: Math.round(performance.now() - saveStarted) }
    } finally {
      await transport.close()
      await stopProcess(identity, qmpSocket, true)
    }
  }

  /**
   * Start a VM from the slot's snapshot (built first when missing or stale): QEMU loads the saved guest,
   * `cont` once loaded, then the first command gives the clone its identity (hostname, clock, entropy).
   * A restore that fails or never answers invalidates that snapshot; it is rebuilt and tried once more.
   */
  const restore = async (binary: string, machine: QemuMachine, options: { dir: string; vm: string; privateKey: Buffer; preferredPort?: number }): Promise<Started> => {
    const slot = await getSlot(machine, binary)
    for (let attempt = 1; ; attempt++) {
      const snapshot = await ensureSnapshot(slot, buildSnapshot(binary, machine, slot, options.vm))
      const started = performance.now()
      let identity: ProcessFile | undefined
      let transport: SshTransport | undefined
      try {
        identity = await launch(binary, machine, { name: options.vm, dir: options.dir, vm: options.vm, incoming: `exec:cat ${quoteShellArg(join(slot.dir, snapshot.stateFile))}`, preferredPort: options.preferredPort })
        const timeoutMs = Math.min(scaleTimeout(RESTORE_TIMEOUT_MS), bootTimeoutMs())
        await resumeRestoredGuest({ qmpSocket: join(options.dir, 'qmp.sock'), identity, deadline: started + timeoutMs, vm: options.vm })
        transport = makeTransport(options.vm, identity.port, options.privateKey, machine.image)
        await waitForBoot({ name: options.vm, transport, identity, serialLog: join(options.dir, 'serial.log'), bootTimeoutMs: timeoutMs, bootStarted: started, bootMarker: undefined, readyCommand: () => identityCommand(options.vm), context: ` (restored from snapshot ${snapshot.id})` })
        return { identity, transport, bootMs: Math.round(performance.now() - started), restoredFrom: snapshot.id }
      } catch (error) {
        await transport?.close()
        if (identity) await stopProcess(identity, join(options.dir, 'qmp.sock'), false)
        await removeInstanceFiles(options.dir)
        const reason = (error as Error).message.split('\n')[0]!
        await invalidateSnapshot(slot, snapshot.id, reason)
        if (attempt >= 2) {
          throw new VmPoolError({ code: 'VMPOOL_SNAPSHOT_INVALID', provider: PROVIDER, operation: 'create', vm: options.vm, message: `restoring a fresh snapshot failed too (${reason}); it was deleted`, hint: 'start without snapshots to see whether the image boots: qemuProvider({ snapshot: false })', cause: error })
        }
        debug('%s: restore from snapshot %s failed (%s): deleted it, rebuilding', options.vm, snapshot.id, reason)
      }
    }
  }

  const writeRecord = async (dir: string, record: VmRecord): Promise<void> => writeFileAtomic(join(dir, 'record.json'), JSON.stringify(record, null, 2), 0o644)

  const adoptBootTransport = (name: string, transport: SshTransport): void => {
    void bootTransports.get(name)?.close()
    bootTransports.set(name, transport)
  }

  const provider: QemuProvider = {
    name: PROVIDER,

    async create(spec: VmSpec): Promise<VmRecord> {
      const name = validateVmName(spec.name, PROVIDER)
      const binary = await requireBinary('create')
      const machine = await resolveMachine(spec, binary)
      const { image } = machine
      const dir = vmDir(name)
      const qmpSocket = join(dir, 'qmp.sock')
      if (Buffer.byteLength(qmpSocket) > MAX_UNIX_SOCKET_PATH) {
        throw invalidOptions(`the state dir path is too long for QEMU's monitor socket (${qmpSocket} is over ${MAX_UNIX_SOCKET_PATH} bytes)`, { provider: PROVIDER, vm: name, hint: 'use a shorter stateDir / VM_POOL_STATE_DIR' })
      }
      await mkdir(root(), { recursive: true, mode: 0o700 })
      try {
        await mkdir(dir, { mode: 0o700 })
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
        throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `a VM named ${name} already exists (${dir})`, hint: `delete it first: vm-pool gc --provider qemu --prefix ${name}` })
      }
      let started: Started | undefined
      try {
        // The VM owns a copy of the key: rebuilding the image later does not lock out running VMs.
        const keyPath = join(dir, 'client_key')
        await copyFile(image.clientKey, keyPath)
        const privateKey = await readFile(keyPath)
        started = canSnapshot(machine)
          ? await restore(binary, machine, { dir, vm: name, privateKey })
          : await bootCold(binary, machine, { name, dir, vm: name, privateKey, readyCommand: () => identityCommand(name, false) })
        const record: VmRecord = {
          name,
          provider: PROVIDER,
          createdAt: new Date().toISOString(),
          spec: { ...spec, labels: spec.labels ? { ...spec.labels } : undefined },
          data: makeRecordData(started, { keyPath, vmDir: dir, image }),
        }
        if (record.spec.labels === undefined) delete record.spec.labels
        await writeRecord(dir, record)
        adoptBootTransport(name, started.transport)
        debug('%s is up on 127.0.0.1:%d (%s, %s, %d ms)', name, started.identity.port, machine.accel, started.restoredFrom ? `restored from snapshot ${started.restoredFrom}` : 'cold boot', started.bootMs)
        return record
      } catch (error) {
        // Nothing half-made survives a failed create: kill QEMU, remove the state dir.
        await started?.transport.close()
        const identity = started?.identity ?? (await readProcessFile(dir))
        if (identity) await stopProcess(identity, qmpSocket, false)
        await rm(dir, { recursive: true, force: true })
        throw error
      }
    },
    async connect(record: VmRecord): Promise<QemuVm> {
      const name = validateVmName(record.name, PROVIDER)
      const parsedData = qemuRecordDataSchema.safeParse(record.data)
      if (!parsedData.success) throw invalidOptions(`not a qemu VM record: ${formatZodError(parsedData.error, record.data)}`, { provider: PROVIDER, vm: name })
      const data = parsedData.data
      let transport = bootTransports.get(name)
      bootTransports.delete(name)
      try {
        await readFile(join(vmDir(name), 'record.json'))
      } catch {
        await transport?.close()
        throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation: 'connect', vm: name, message: `VM ${name} does not exist (no ${join(vmDir(name), 'record.json')}: deleted, or created with another stateDir)` })
      }
      if (!transport) {
        let privateKey: Buffer
        try {
          privateKey = await readFile(data.keyPath)
        } catch (error) {
          throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation: 'connect', vm: name, message: `the key of VM ${name} is gone (${data.keyPath}): the VM was deleted`, cause: error })
        }
        transport = new SshTransport({ host: data.host, port: data.port, username: data.username, privateKey, hostKey: data.hostKey, maxChannels: GUEST_MAX_CHANNELS, provider: PROVIDER, vm: name })
      }
      return createQemuVm(record, transport)
    },

    async delete(name: string): Promise<void> {
      validateVmName(name, PROVIDER)
      const dir = vmDir(name)
      await bootTransports.get(name)?.close()
      bootTransports.delete(name)
      const identity = await readProcessFile(dir)
      if (identity) await stopProcess(identity, join(dir, 'qmp.sock'), true)
      try {
        await rm(dir, { recursive: true, force: true })
      } catch (error) {
        throw new VmPoolError({ code: 'VMPOOL_DELETE_FAILED', provider: PROVIDER, operation: 'delete', vm: name, message: `could not remove ${dir}: ${(error as Error).message}`, cause: error })
      }
    },

    async list(): Promise<VmInfo[]> {
      let names: string[]
      try {
        names = (await readdir(root(), { withFileTypes: true })).filter((entry) => entry.isDirectory()).map((entry) => entry.name)
      } catch {
        return []
      }
      const infos: VmInfo[] = []
      for (const name of names.sort()) {
        const dir = vmDir(name)
        const identity = await readProcessFile(dir)
        const alive = identity !== undefined && isProcessAlive(identity)
        let record: VmRecord | undefined
        try {
          record = JSON.parse(await readFile(join(dir, 'record.json'), 'utf8')) as VmRecord
        } catch {
          // still booting, or half deleted
        }
        // A dir with neither a live process nor a record may be a create that just started: 'starting'.
        const state = alive ? (record ? 'running' : 'starting') : identity || record ? 'dead' : 'starting'
        const info: VmInfo = { name, provider: PROVIDER, state }
        if (record) Object.assign(info, { createdAt: record.createdAt, labels: record.spec.labels, record })
        infos.push(info)
      }
      return infos
    },

    async probe(): Promise<ProviderProbe> {
      const details: Record<string, string> = { stateDir: root(), imageDir: imageDir() }
      const binary = await findQemuBinary(config.qemuBinary)
      if (!binary) {
        return { usable: false, reason: 'qemu-system-x86_64 not found on PATH', details, hint: 'sudo apt-get install qemu-system-x86 (or set the qemuBinary option)' }
      }
      details.binary = binary
      const version = await runProcess(binary, ['--version'], { timeoutMs: 10_000, env: process.env }).catch(() => undefined)
      if (version?.exitCode === 0) details.version = version.stdout.split('\n')[0]!.replace(/^QEMU emulator version\s*/, '')
      let image: ResolvedImage
      try {
        image = await loadImage(config.image, imageDir())
        details.image = image.dir
        if (image.build.kernelVersion) details.kernel = image.build.kernelVersion
      } catch (error) {
        details.image = 'missing'
        return { usable: false, reason: isVmPoolError(error) ? error.shortMessage : String(error), details, hint: isVmPoolError(error) ? error.hint : undefined }
      }
      const accel = await resolveAccel(binary, image)
      details.accel = accel.accel
      details.accelReason = accel.reason
      const machine: QemuMachine = { accel: accel.accel, cpus: config.cpus, memoryMiB: Math.max(config.memoryMiB, image.minMemoryMiB), image }
      if (config.snapshot === false) details.snapshot = 'off (snapshot: false): every VM boots'
      else if (!canSnapshot(machine)) details.snapshot = 'not used: the image has a disk, whose writes a saved guest state does not hold; every VM boots'
      else {
        const slot = await getSlot(machine, binary)
        details.snapshot = describeSnapshotState(slot, await readSnapshot(slot)).text
      }
      return { usable: true, reason: `QEMU ${details.version ?? ''} with ${accel.accel.toUpperCase()}, image ${config.image} present`.replace(/\s+/g, ' '), details }
    },

    async close(): Promise<void> {
      const transports = [...bootTransports.values()]
      bootTransports.clear()
      await Promise.all(transports.map((transport) => transport.close()))
    },
  }
  if (config.snapshot === 'auto') {
    provider.reset = async (name: string): Promise<VmRecord> => {
      validateVmName(name, PROVIDER)
      const dir = vmDir(name)
      let record: VmRecord
      try {
        record = JSON.parse(await readFile(join(dir, 'record.json'), 'utf8')) as VmRecord
      } catch (error) {
        throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation: 'reset', vm: name, message: `VM ${name} does not exist (no ${join(dir, 'record.json')})`, cause: error })
      }
      const binary = await requireBinary('reset')
      const machine = await resolveMachine(record.spec, binary)
      if (!canSnapshot(machine)) {
        throw new VmPoolError({ code: 'VMPOOL_SNAPSHOT_INVALID', provider: PROVIDER, operation: 'reset', vm: name, message: `VM ${name} cannot be reset to a snapshot: its image ${machine.image.dir} has a disk`, hint: "use a keepWarm.reset shell line instead of 'snapshot' for disk images" })
      }
      await bootTransports.get(name)?.close()
      bootTransports.delete(name)
      const old = await readProcessFile(dir)
      // The old guest's state is thrown away: no graceful shutdown needed.
      if (old) await stopProcess(old, join(dir, 'qmp.sock'), false)
      await removeInstanceFiles(dir)
      const keyPath = join(dir, 'client_key')
      try {
        const started = await restore(binary, machine, { dir, vm: name, privateKey: await readFile(keyPath), preferredPort: old?.port })
        const next: VmRecord = { ...record, data: makeRecordData(started, { keyPath, vmDir: dir, image: machine.image }) }
        await writeRecord(dir, next)
        adoptBootTransport(name, started.transport)
        debug('%s was reset to snapshot %s (127.0.0.1:%d, %d ms)', name, started.restoredFrom, started.identity.port, started.bootMs)
        return next
      } catch (error) {
        // A VM that could not be reset is not half-kept: it is gone, as a failed create leaves nothing.
        await rm(dir, { recursive: true, force: true })
        throw error
      }
    }
  }
  return provider
}

/** A QEMU that runs and answers: what create and reset hand on. */
interface Started {
  identity: ProcessFile
  /** The connection that proved the guest answers; the first `connect` in this process reuses it. */
  transport: SshTransport
  bootMs: number
  restoredFrom?: string
}

function makeRecordData(started: Started, paths: { keyPath: string; vmDir: string; image: ResolvedImage }): Record<string, JsonValue> {
  const data = {
    host: '127.0.0.1',
    port: started.identity.port,
    username: paths.image.username,
    hostKey: paths.image.hostKey,
    keyPath: paths.keyPath,
    vmDir: paths.vmDir,
    pid: started.identity.pid,
    accel: started.identity.accel,
    image: paths.image.dir,
    bootMs: started.bootMs,
  }
  return started.restoredFrom ? { ...data, restoredFrom: started.restoredFrom } : data
}

/**
 * The first command in a VM gives it its own identity: its name as hostname; for a restored clone also
 * the current time (its clock stopped when the template was saved) and fresh host entropy mixed into
 * its RNG (the kernel also reseeds on the new VM generation ID). Tolerant: a custom image without
 * `hostname` or `date -s` still counts as up.
 */
function identityCommand(name: string, restored = true): string {
  const parts = [`hostname ${quoteShellArg(name)} 2>/dev/null`]
  if (restored) {
    parts.push(`date -s @${Math.floor(Date.now() / 1000)} >/dev/null 2>&1`, `printf %s ${randomBytes(32).toString('hex')} >/dev/urandom 2>/dev/null`)
  }
  return `${parts.join('; ')}; exit 0`
}

/** What one QEMU run leaves in a VM dir; the key and record stay (a reset reuses the dir). */
async function removeInstanceFiles(dir: string): Promise<void> {
  for (const file of ['process.json', 'qemu.pid', 'qmp.sock', 'serial.log']) await rm(join(dir, file), { force: true })
}

interface WaitForBootOptions {
  name: string
  transport: SshTransport
  identity: ProcessFile
  serialLog: string
  bootTimeoutMs: number
  bootStarted: number
  bootMarker: string | undefined
  /** Run until it exits 0: the guest is up. */
  readyCommand: () => string
  /** Appended to error messages, e.g. ` (the snapshot template in DIR)`. */
  context?: string
}

/** Until a command runs in the guest: fail fast if QEMU exits, and show the serial console when it never comes up. */
async function waitForBoot(options: WaitForBootOptions): Promise<void> {
  const { name, transport, identity } = options
  const deadline = options.bootStarted + options.bootTimeoutMs
  let lastError: unknown
  let markerSeen = options.bootMarker === undefined
  while (performance.now() < deadline) {
    if (!isProcessAlive(identity)) {
      throw new VmPoolError({
        code: 'VMPOOL_CREATE_FAILED',
        provider: PROVIDER,
        operation: 'create',
        vm: name,
        message: `QEMU exited while the guest was booting${options.context ?? ''}; the guest's console ended with:\n${await readSerialTail(options.serialLog)}`,
        hint: 'a kernel panic or a broken image: rebuild it with `vm-pool image build --force`',
      })
    }
    // Until the guest says its network is up, an SSH attempt would only sit in QEMU's forwarder.
    if (!markerSeen) {
      markerSeen = (await readFile(options.serialLog, 'utf8').catch(() => '')).includes(options.bootMarker!)
      if (!markerSeen) {
        await sleep(BOOT_POLL_INTERVAL_MS)
        continue
      }
    }
    try {
      // An attempt may not outlast the boot deadline (the handshake timeout alone could).
      const remainingMs = Math.max(1, deadline - performance.now())
      const attempt = transport.exec(options.readyCommand())
      let timer: NodeJS.Timeout | undefined
      const expired = new Promise<undefined>((resolve) => (timer = setTimeout(resolve, remainingMs, undefined)))
      const result = await Promise.race([attempt, expired]).finally(() => clearTimeout(timer))
      if (result === undefined) {
        attempt.catch(() => {})
        await transport.close()
        break
      }
      if (result.exitCode === 0) return
      lastError = new Error(`the first command exited with ${result.exitCode}`)
    } catch (error) {
      // The wrong host key or a refused key will not get better by waiting.
      if (isVmPoolError(error, 'VMPOOL_HOST_KEY_MISMATCH') || isVmPoolError(error, 'VMPOOL_AUTH_FAILED')) throw error
      lastError = error
    }
    await sleep(BOOT_POLL_INTERVAL_MS)
  }
  throw new VmPoolTimeoutError({
    code: 'VMPOOL_BOOT_TIMEOUT',
    provider: PROVIDER,
    operation: 'create',
    vm: name,
    timeoutName: 'BOOT_TIMEOUT_MS',
    timeoutMs: options.bootTimeoutMs,
    message: `timed out after ${options.bootTimeoutMs} ms waiting for SSH on 127.0.0.1:${identity.port} (BOOT_TIMEOUT_MS, ${identity.accel})${options.context ?? ''}; last error: ${(lastError as Error | undefined)?.message ?? 'none'}; the guest's console ended with:\n${await readSerialTail(options.serialLog)}`,
    hint: 'on a slow or busy machine set VM_POOL_TIMEOUT_SCALE=2 (or higher); the VM was killed',
    cause: lastError,
  })
}

async function readSerialTail(serialLog: string): Promise<string> {
  try {
    const handle = await open(serialLog, 'r')
    try {
      const { size } = await handle.stat()
      const length = Math.min(size, 16_384)
      const buffer = Buffer.alloc(length)
      await handle.read(buffer, 0, length, size - length)
      const lines = buffer.toString('utf8').replace(/\r/g, '').split('\n').filter((line) => line.trim() !== '')
      return lines.length === 0 ? '  (no console output)' : lines.slice(-SERIAL_TAIL_LINES).map((line) => `  | ${line}`).join('\n')
    } finally {
      await handle.close()
    }
  } catch {
    return '  (no console log)'
  }
}

async function readProcessFile(dir: string): Promise<ProcessFile | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, 'process.json'), 'utf8')) as ProcessFile
  } catch {
    return undefined
  }
}

/** QMP `quit` first (when graceful), then SIGKILL after DELETE_GRACE_MS; returns once the process is gone. */
async function stopProcess(identity: ProcessFile, qmpSocket: string, graceful: boolean): Promise<void> {
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
  try {
    process.kill(identity.pid, 'SIGKILL')
  } catch {
    // exited in the meantime
  }
  if (!(await waitForExit(identity, scaleTimeout(KILL_WAIT_MS)))) {
    throw new VmPoolError({ code: 'VMPOOL_DELETE_FAILED', provider: PROVIDER, operation: 'delete', message: `QEMU pid ${identity.pid} is still alive ${KILL_WAIT_MS} ms after SIGKILL`, hint: 'check the process (ps -p PID); is it stuck in the kernel?' })
  }
}

async function waitForExit(identity: ProcessIdentity, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs
  while (isProcessAlive(identity)) {
    if (performance.now() > deadline) return false
    await sleep(50)
  }
  return true
}

function createQemuVm(record: VmRecord, transport: SshTransport): QemuVm {
  return {
    name: record.name,
    provider: PROVIDER,
    record,
    exec: (command: string | string[], options?: ExecOptions): Promise<ExecResult> => transport.exec(command, options),
    execBuffer: (command: string | string[], options?: ExecOptions) => transport.execBuffer(command, options),
    putFile: (path: string, data: string | Buffer) => transport.putFile(path, data),
    getFile: (path: string) => transport.getFile(path),
    close: () => transport.close(),
    [Symbol.asyncDispose]: () => transport.close(),
  }
}
