/**
 * `qemuProvider({ host, ... })`: QEMU on a VM host reached over SSH (docs/providers.md, "QEMU on a VM
 * host"). Everything that touches the host goes through `SshVmHost` (one ssh2 transport): the VM dirs
 * and QEMU processes live there, laid out as the local provider lays them out (qemu-vm-dir.ts), and each
 * guest's SSH is reached through a direct-tcpip channel to its hostfwd port on the host's 127.0.0.1.
 * A VM starts by a cold boot (vm-host-launcher.ts) or a snapshot restore (vm-host-snapshot.ts); records
 * hold how to reach the host, never a private key.
 */
import { posix } from 'node:path'
import { VmPoolError, invalidOptions, isVmPoolError } from '../../errors.js'
import { SSH_READY_TIMEOUT_MS, type SshTransport } from '../../transport/ssh-transport.js'
import { createDebug } from '../../util/debug.js'
import { scaleTimeout } from '../../util/timeouts.js'
import { VM_NAME_PATTERN, validateVmName } from '../../util/vm-name.js'
import { VmPortForwards } from '../vm-port-forwards.js'
import type { JsonValue, ProviderProbe, VmInfo, VmRecord, VmSpec } from '../vm-provider.js'
import type { QemuMachine } from './qemu-command.js'
import { DELETE_GRACE_MS } from './qemu-process.js'
import type { QemuProvider } from './qemu-provider.js'
import { describeQemuVm, getQemuShellCommand, type VmHostRef } from './kept-vm-help.js'
import { getQemuFingerprint, type QemuConfig, type VmHostConfig } from './qemu-provider-options.js'
import { VM_DIR_FILES, parseQemuRecordData, qemuRecordDataSchema } from './qemu-vm-dir.js'
import { createQemuVm, type QemuVm } from './qemu-vm.js'
import { identityCommand } from './start-strategy.js'
import { SshVmHost } from './ssh-vm-host.js'
import { VmHostLauncher } from './vm-host-launcher.js'
import { VmHostMachineResolver } from './vm-host-machine.js'
import { VmHostSnapshots } from './vm-host-snapshot.js'
import { IS_ALIVE_SCRIPT, LIST_VMS_SCRIPT, PREPARE_VM_DIR_SCRIPT, WRITE_FILE_SCRIPT } from './vm-host-scripts.js'

const PROVIDER = 'qemu'

const debug = createDebug('vm-pool:qemu')

export function vmHostQemuProvider(config: QemuConfig, vmHostConfig: VmHostConfig): QemuProvider {
  const host = new SshVmHost(vmHostConfig)
  const ref: VmHostRef = { host: vmHostConfig.host, port: vmHostConfig.port, user: vmHostConfig.user, hostKey: vmHostConfig.hostKey }
  const stateDir = () => host.resolvePath(vmHostConfig.stateDir ?? '~/.cache/vm-pool')
  const root = async () => posix.join(await stateDir(), 'qemu')
  const machines = new VmHostMachineResolver(config, host, root)
  const launcher = new VmHostLauncher(host, machines, config)
  const snapshots = new VmHostSnapshots({ config, host, launcher, machines, dir: async () => posix.join(await stateDir(), 'qemu-snapshots') })
  const scriptTimeout = () => launcher.scriptTimeoutMs()
  const bootTransports = new Map<string, SshTransport>()
  const forwards = new VmPortForwards()
  const adoptBootTransport = (name: string, transport: SshTransport) => {
    void bootTransports.get(name)?.close()
    bootTransports.set(name, transport)
  }
  const dropBootTransport = async (name: string) => {
    const transport = bootTransports.get(name)
    bootTransports.delete(name)
    await transport?.close()
  }

  /** Start the VM in `dir`: a snapshot restore where the machine allows it, a cold boot otherwise. */
  async function start(name: string, dir: string, machine: QemuMachine, privateKey: Buffer, preferredPort?: number): Promise<{ pid: number; port: number; transport: SshTransport; bootMs: number; restoredFrom?: string }> {
    if (snapshots.canSnapshot(machine)) return snapshots.restore({ vm: name, dir, machine, privateKey, ...(preferredPort === undefined ? {} : { preferredPort }) })
    return launcher.coldBoot({ vm: name, instance: name, dir, machine, privateKey, readyCommand: identityCommand(name, false), context: ` (on VM host ${host.id})`, ...(preferredPort === undefined ? {} : { preferredPort }) })
  }

  const makeRecordData = (started: { pid: number; port: number; bootMs: number; restoredFrom?: string }, dir: string, machine: QemuMachine): Record<string, JsonValue> => {
    const { image } = machine
    const data: Record<string, JsonValue> = { host: '127.0.0.1', port: started.port, username: image.username, hostKey: image.hostKey, keyPath: posix.join(dir, VM_DIR_FILES.clientKey), vmDir: dir, pid: started.pid, accel: machine.accel, image: image.dir, bootMs: started.bootMs, vmHost: { ...ref } }
    if (image.sshMaxSessions !== undefined) data.sshMaxSessions = image.sshMaxSessions
    if (started.restoredFrom !== undefined) data.restoredFrom = started.restoredFrom
    return data
  }
  const writeRecord = (record: VmRecord) => host.runOk('writing the VM record', WRITE_FILE_SCRIPT, [posix.join(String(record.data.vmDir), VM_DIR_FILES.record)], { input: JSON.stringify(record, null, 2), timeoutMs: scriptTimeout(), vm: record.name })

  const notFound = (name: string, operation: string, why: string, cause?: unknown) => new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation, vm: name, message: `VM ${name} does not exist on VM host ${host.id} (${why})`, cause })

  const provider: QemuProvider = {
    name: PROVIDER,

    async create(spec: VmSpec): Promise<VmRecord> {
      const name = validateVmName(spec.name, PROVIDER)
      const machine = await machines.resolve(spec)
      const { image } = machine
      const base = await root()
      const dir = posix.join(base, name)
      const files = [image.clientKey, image.kernel, image.initrd, image.disk, image.seed].filter((path): path is string => path !== undefined)
      const prepared = await host.run(PREPARE_VM_DIR_SCRIPT, [base, dir, ...files], { timeoutMs: scriptTimeout() })
      if (prepared.exitCode === 17) throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `a VM named ${name} already exists on VM host ${host.id} (${dir})`, hint: `delete it first: vm-pool gc --provider qemu --prefix ${name}` })
      if (prepared.exitCode === 3) throw new VmPoolError({ code: 'VMPOOL_IMAGE_MISSING', provider: PROVIDER, operation: 'create', vm: name, message: `image ${JSON.stringify(image.dir)} on VM host ${host.id} is incomplete: ${prepared.stderr.trim().replace(/^missing\t/gm, '')} is missing`, hint: 'rebuild it there with `npx vm-pool image build --force`' })
      if (prepared.exitCode !== 0) throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `could not make ${dir} on VM host ${host.id}: ${prepared.stderr.trim() || `exit code ${prepared.exitCode}`}` })
      const privateKey = Buffer.from(prepared.stdout)
      let transport: SshTransport | undefined
      try {
        const started = await start(name, dir, machine, privateKey)
        transport = started.transport
        const record: VmRecord = { name, provider: PROVIDER, createdAt: new Date().toISOString(), spec: { ...spec, labels: spec.labels ? { ...spec.labels } : undefined }, data: makeRecordData(started, dir, machine) }
        if (record.spec.labels === undefined) delete record.spec.labels
        await writeRecord(record)
        adoptBootTransport(name, transport)
        debug('%s is up on %s, guest port %d (%s, %s, %d ms)', name, host.id, started.port, machine.accel, started.restoredFrom ? `restored from snapshot ${started.restoredFrom}` : 'cold boot', started.bootMs)
        return record
      } catch (error) {
        // Nothing half-made survives a failed create: kill QEMU, remove the VM dir on the host.
        await transport?.close()
        await launcher.stop(dir, 0, 'dir').catch((cleanup: unknown) => debug('%s: cleanup after a failed create: %s', name, (cleanup as Error).message))
        throw error
      }
    },

    async connect(record: VmRecord): Promise<QemuVm> {
      const name = validateVmName(record.name, PROVIDER)
      const data = parseQemuRecordData(record)
      const recorded = data.vmHost as Partial<VmHostRef> | undefined
      if (!recorded || recorded.host !== ref.host || recorded.port !== ref.port || recorded.user !== ref.user) {
        const where = recorded ? `VM host ${recorded.user}@${recorded.host}:${recorded.port}` : 'this machine (a local QEMU VM)'
        throw invalidOptions(`VM ${name} runs on ${where}, but this provider reaches VM host ${host.id}`, { provider: PROVIDER, vm: name, hint: 'connect with a qemuProvider whose host, port and user are the ones that created the VM' })
      }
      // The key is read from the VM's own dir only: a record naming another file is not one this provider wrote.
      if (posix.basename(data.vmDir) !== name || data.keyPath !== posix.join(data.vmDir, VM_DIR_FILES.clientKey)) throw invalidOptions(`the record of ${name} names another VM's dir or key (${data.vmDir}, ${data.keyPath})`, { provider: PROVIDER, vm: name })
      let transport = bootTransports.get(name)
      bootTransports.delete(name)
      transport?.setReadyTimeout(scaleTimeout(SSH_READY_TIMEOUT_MS))
      // The record file proves the VM exists; the guest's key is read from its dir there, into memory only.
      const read = await host.run('[ -f "$1" ] || exit 3; cat -- "$2"', [posix.join(data.vmDir, VM_DIR_FILES.record), data.keyPath], { timeoutMs: scriptTimeout() })
      if (read.exitCode !== 0) {
        await transport?.close()
        throw notFound(name, 'connect', read.exitCode === 3 ? `no ${posix.join(data.vmDir, VM_DIR_FILES.record)}: deleted` : `its key ${data.keyPath} cannot be read: ${read.stderr.trim()}`)
      }
      transport ??= launcher.guestTransport(name, data.port, data, Buffer.from(read.stdout), false)
      return createQemuVm({ record, transport, qemu: { on: 'vm-host' }, forwards })
    },

    async delete(name: string): Promise<void> {
      validateVmName(name, PROVIDER)
      await forwards.closeVm(name)
      await dropBootTransport(name)
      try {
        await launcher.stop(posix.join(await root(), name), DELETE_GRACE_MS, 'dir')
      } catch (error) {
        if (isVmPoolError(error, 'VMPOOL_EXEC_FAILED')) throw new VmPoolError({ code: 'VMPOOL_DELETE_FAILED', provider: PROVIDER, operation: 'delete', vm: name, message: error.shortMessage, cause: error })
        throw error
      }
    },

    async list(): Promise<VmInfo[]> {
      const base = await root()
      const output = await host.runOk('listing VMs', LIST_VMS_SCRIPT, [base], { timeoutMs: scriptTimeout() })
      const infos = new Map<string, VmInfo>()
      for (const line of output.split('\n')) {
        const [kind, name = '', third = '', fourth = ''] = line.split('\t')
        if (!VM_NAME_PATTERN.test(name) || infos.has(name)) continue
        if (kind === 'orphan') {
          // A QEMU whose dir is gone: unreachable, but alive until `delete(name)` ends it.
          if (third === `${name}/${VM_DIR_FILES.pid}`) infos.set(name, { name, provider: PROVIDER, state: 'unknown' })
          continue
        }
        if (kind !== 'vm') continue
        let record: VmRecord | undefined
        try {
          record = fourth ? (JSON.parse(Buffer.from(fourth, 'base64').toString('utf8')) as VmRecord) : undefined
        } catch (error) {
          debug('%s: unreadable record on %s: %s', name, host.id, (error as Error).message)
        }
        const alive = third === '1'
        const info: VmInfo = { name, provider: PROVIDER, state: alive ? (record ? 'running' : 'starting') : record ? 'dead' : 'starting' }
        if (record) Object.assign(info, { createdAt: record.createdAt, labels: record.spec?.labels, record })
        infos.set(name, info)
      }
      return [...infos.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    },

    async probe(): Promise<ProviderProbe> {
      const details: Record<string, string> = { vmHost: host.id }
      try {
        details.stateDir = await root()
        details.imageDir = await machines.imageDir()
        const image = await machines.loadImage(config.options.image)
        details.image = image.dir
        const accel = await machines.resolveAccel(image)
        const snapshot = config.options.snapshot === false ? 'off (snapshot: false): every VM boots' : image.kernel !== undefined && image.disk === undefined ? 'on: VMs restore a saved guest (built on the VM host by the first create of a shape)' : 'not used: a disk image; every VM boots'
        Object.assign(details, { binary: machines.binary, accel: accel.accel, accelReason: accel.reason, snapshot })
        return { usable: true, reason: `QEMU on VM host ${host.id} with ${accel.accel.toUpperCase()}, image ${config.options.image} present`, details }
      } catch (error) {
        return { usable: false, reason: isVmPoolError(error) ? error.shortMessage : String(error), details, hint: isVmPoolError(error) ? error.hint : undefined }
      }
    },

    /** Its QEMU still runs on the VM host (the recorded pid, its command line naming the VM's pid file): one script there. */
    async isRunning(record: VmRecord): Promise<boolean> {
      const name = validateVmName(record.name, PROVIDER)
      const parsed = qemuRecordDataSchema.safeParse(record.data)
      if (!parsed.success || posix.basename(parsed.data.vmDir) !== name) return false
      const result = await host.run(IS_ALIVE_SCRIPT, [String(parsed.data.pid), posix.join(parsed.data.vmDir, VM_DIR_FILES.pid)], { timeoutMs: scriptTimeout() })
      return result.exitCode === 0
    },

    describe: describeQemuVm,
    shell: getQemuShellCommand,
    fingerprint: (spec) => getQemuFingerprint(config, spec),

    async close(): Promise<void> {
      const transports = [...bootTransports.values()]
      bootTransports.clear()
      await forwards.closeAll()
      await Promise.all(transports.map((transport) => transport.close()))
      await host.close()
    },
  }
  if (config.options.snapshot === 'auto') {
    provider.reset = async (name: string): Promise<VmRecord> => {
      validateVmName(name, PROVIDER)
      const dir = posix.join(await root(), name)
      const read = await host.run('[ -f "$1/record.json" ] || exit 3; cat -- "$1/record.json"; printf "\\0"; cat -- "$1/client_key"', [dir], { timeoutMs: scriptTimeout() })
      if (read.exitCode !== 0) throw notFound(name, 'reset', read.exitCode === 3 ? `no ${posix.join(dir, VM_DIR_FILES.record)}` : read.stderr.trim())
      const [recordText = '', key = ''] = read.stdout.split('\0')
      const record = JSON.parse(recordText) as VmRecord
      const machine = await machines.resolve(record.spec)
      if (!snapshots.canSnapshot(machine)) {
        throw new VmPoolError({ code: 'VMPOOL_SNAPSHOT_INVALID', provider: PROVIDER, operation: 'reset', vm: name, message: `VM ${name} cannot be reset to a snapshot on VM host ${host.id}: its image ${machine.image.dir} is not an initramfs image (disk images cold-boot there)` })
      }
      // The guest is replaced: forwards into the old one end with it.
      await forwards.closeVm(name)
      await dropBootTransport(name)
      await launcher.stop(dir, 0, 'instance')
      try {
        const started = await snapshots.restore({ vm: name, dir, machine, privateKey: Buffer.from(key), preferredPort: typeof record.data.port === 'number' ? record.data.port : undefined })
        const next: VmRecord = { ...record, data: makeRecordData(started, dir, machine) }
        await writeRecord(next)
        adoptBootTransport(name, started.transport)
        return next
      } catch (error) {
        // A VM that could not be reset is not half-kept: it is gone, as a failed create leaves nothing.
        await launcher.stop(dir, 0, 'dir').catch(() => {})
        throw error
      }
    }
  }
  return provider
}
