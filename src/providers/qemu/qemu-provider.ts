import { existsSync } from 'node:fs'
import { access, copyFile, mkdir, readFile, rm } from 'node:fs/promises'
import { VmPoolError, invalidOptions } from '../../errors.js'
import { SSH_READY_TIMEOUT_MS, type SshTransport } from '../../transport/ssh-transport.js'
import { createDebug } from '../../util/debug.js'
import { getProcessStartUnixMs, isProcessAlive } from '../../util/process-info.js'
import { validateVmName } from '../../util/vm-name.js'
import { scaleTimeout } from '../../util/timeouts.js'
import type { JsonValue, KeptVmHelp, LocalCommand, ProviderProbe, VmInfo, VmProvider, VmRecord, VmSpec } from '../vm-provider.js'
import { describeQemuVm, getHostKeyAlias, getQemuShellCommand, isPublicKeyLine } from './kept-vm-help.js'
import type { ResolvedImage } from './qemu-image.js'
import { QemuMachineResolver } from './qemu-machine-resolver.js'
import { identifyQemu, findVmQemuProcesses } from './qemu-process-scan.js'
import { stopQemuOf } from './qemu-process.js'
import { probeQemu } from './qemu-probe.js'
import { getQemuFingerprint, resolveQemuConfig, type QemuProviderOptions } from './qemu-provider-options.js'
import { QemuVmDir, listVmDirNames, parseQemuRecordData } from './qemu-vm-dir.js'
import { createQemuVm, makeGuestTransport, type QemuVm } from './qemu-vm.js'
import { VmPortForwards } from '../vm-port-forwards.js'
import type { StartedQemu } from './start-strategy.js'
import { vmHostQemuProvider } from './vm-host-qemu-provider.js'

const PROVIDER = 'qemu'
const debug = createDebug('vm-pool:qemu')

export interface QemuProvider extends VmProvider {
  connect(record: VmRecord): Promise<QemuVm>
  /**
   * Present unless `snapshot: false`: put the VM back to the snapshot state (its QEMU is replaced by a
   * fresh restore; same name and state dir, the same port when it is still free). Returns the new record.
   */
  reset?(name: string): Promise<VmRecord>
  probe(): Promise<ProviderProbe>
  close(): Promise<void>
  describe(record: VmRecord): KeptVmHelp
  fingerprint(spec: Omit<VmSpec, 'name'>): Record<string, unknown>
  /** `undefined` for a VM on a VM host (its key is there, not here): `vm-pool ssh` then runs commands through exec. */
  shell(record: VmRecord, command?: string[]): LocalCommand | undefined
}

/**
 * Real VMs with QEMU: KVM when it works, TCG emulation otherwise; user-mode networking with the
 * guest's SSH forwarded to a loopback port; one detached QEMU per VM that outlives the creating
 * process (VMs are shared between processes), found again through `<stateDir>/qemu/<name>/`
 * (qemu-vm-dir.ts) or, when that dir is gone, by its command line (qemu-process-scan.ts).
 * A VM starts by a cold boot or a snapshot restore (start-strategy.ts); docs/qemu.md has the details.
 * With `host`, QEMU runs on that VM host over SSH instead (vm-host-qemu-provider.ts).
 */
export function qemuProvider(options: QemuProviderOptions = {}): QemuProvider {
  const config = resolveQemuConfig(options)
  if (config.vmHost) return vmHostQemuProvider(config, config.vmHost)
  const machines = new QemuMachineResolver(config)
  const vmDir = (name: string) => QemuVmDir.of(config.root(), name)
  /** Transports that proved the boot, handed to the first `connect` in this process (saves a handshake). */
  const bootTransports = new Map<string, SshTransport>()
  /** Port forwards of the Vms this provider object handed out: `delete(name)` closes them. */
  const forwards = new VmPortForwards()

  const adoptBootTransport = (name: string, transport: SshTransport): void => {
    void bootTransports.get(name)?.close()
    bootTransports.set(name, transport)
  }
  const dropBootTransport = async (name: string): Promise<void> => {
    const transport = bootTransports.get(name)
    bootTransports.delete(name)
    await transport?.close()
  }

  const provider: QemuProvider = {
    name: PROVIDER,

    async create(spec: VmSpec): Promise<VmRecord> {
      const name = validateVmName(spec.name, PROVIDER)
      const binary = await machines.requireBinary('create')
      const machine = await machines.resolve(spec, binary)
      const { image } = machine
      const dir = vmDir(name)
      await mkdir(config.root(), { recursive: true, mode: 0o700 })
      try {
        await mkdir(dir.dir, { mode: 0o700 })
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
        throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `a VM named ${name} already exists (${dir.dir})`, hint: `delete it first: vm-pool gc --provider qemu --prefix ${name}` })
      }
      let started: StartedQemu | undefined
      try {
        const keyPath = dir.path('clientKey')
        await copyFile(image.clientKey, keyPath)
        if (isPublicKeyLine(image.hostKey)) await dir.writeKnownHosts(getHostKeyAlias(name), image.hostKey)
        started = await machines.startStrategy(machine, binary).start({ vm: name, dir, privateKey: await readFile(keyPath) })
        const record: VmRecord = {
          name,
          provider: PROVIDER,
          createdAt: new Date().toISOString(),
          spec: { ...spec, labels: spec.labels ? { ...spec.labels } : undefined },
          data: makeRecordData(started, { keyPath, vmDir: dir.dir, image }),
        }
        if (record.spec.labels === undefined) delete record.spec.labels
        await dir.writeRecord(record)
        adoptBootTransport(name, started.transport)
        debug('%s is up on 127.0.0.1:%d (%s, %s, %d ms)', name, started.identity.port, machine.accel, started.restoredFrom ? `restored from snapshot ${started.restoredFrom}` : 'cold boot', started.bootMs)
        return record
      } catch (error) {
        // Nothing half-made survives a failed create: kill QEMU, remove the state dir.
        await started?.transport.close()
        await stopQemuOf(dir, false)
        await rm(dir.dir, { recursive: true, force: true })
        throw error
      }
    },

    async connect(record: VmRecord): Promise<QemuVm> {
      const name = validateVmName(record.name, PROVIDER)
      const data = parseQemuRecordData(record)
      if (data.vmHost !== undefined) throw invalidOptions(`VM ${name} runs on a VM host (${JSON.stringify(data.vmHost)}), not on this machine`, { provider: PROVIDER, vm: name, hint: 'connect with qemuProvider({ host, user, port, privateKeyFile, hostKey }) for that VM host' })
      let transport = bootTransports.get(name)
      bootTransports.delete(name)
      // Its open connection is kept; the connections it opens from now on get the usual handshake time.
      transport?.setReadyTimeout(scaleTimeout(SSH_READY_TIMEOUT_MS))
      const recordFile = vmDir(name).path('record')
      try {
        await access(recordFile)
      } catch {
        await transport?.close()
        throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation: 'connect', vm: name, message: `VM ${name} does not exist (no ${recordFile}: deleted, or created with another stateDir)` })
      }
      if (!transport) {
        let privateKey: Buffer
        try {
          privateKey = await readFile(data.keyPath)
        } catch (error) {
          throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation: 'connect', vm: name, message: `the key of VM ${name} is gone (${data.keyPath}): the VM was deleted`, cause: error })
        }
        transport = makeGuestTransport({ vm: name, host: data.host, port: data.port, username: data.username, hostKey: data.hostKey, privateKey, maxChannels: data.sshMaxSessions })
      }
      return createQemuVm({ record, transport, qemu: { on: 'local', qmpSocket: new QemuVmDir(data.vmDir, name).path('qmp') }, forwards })
    },

    async delete(name: string): Promise<void> {
      validateVmName(name, PROVIDER)
      const dir = vmDir(name)
      await forwards.closeVm(name)
      await dropBootTransport(name)
      await stopQemuOf(dir, true)
      try {
        await rm(dir.dir, { recursive: true, force: true })
      } catch (error) {
        throw new VmPoolError({ code: 'VMPOOL_DELETE_FAILED', provider: PROVIDER, operation: 'delete', vm: name, message: `could not remove ${dir.dir}: ${(error as Error).message}`, cause: error })
      }
      // A QEMU that wrote its pid file just before the dir went (its creator still starting it) is found by its command line.
      await stopQemuOf(dir, false)
    },

    async list(): Promise<VmInfo[]> {
      const root = config.root()
      const infos: VmInfo[] = []
      for (const name of await listVmDirNames(root)) {
        const dir = vmDir(name)
        const recorded = await dir.readProcess()
        const pid = recorded ? undefined : await dir.readPidFile()
        // Without process.json (its creator died right after QEMU started) QEMU's own pid file, checked against the command line.
        const alive = recorded ? isProcessAlive(recorded) : pid !== undefined && identifyQemu(pid, dir.commandLine()) !== undefined
        const record = await dir.readRecord().catch((error: unknown) => void debug('%s: %s', name, (error as Error).message))
        // A dir with neither a live process nor a record may be a create that just started: 'starting'.
        const state = alive ? (record ? 'running' : 'starting') : recorded || record ? 'dead' : 'starting'
        const info: VmInfo = { name, provider: PROVIDER, state }
        if (record) Object.assign(info, { createdAt: record.createdAt, labels: record.spec.labels, record })
        infos.push(info)
      }
      // QEMUs whose VM dir is gone: unreachable, but alive and burning a core until `delete(name)` ends them.
      const listed = new Set(infos.map((info) => info.name))
      for (const orphan of findVmQemuProcesses(root)) {
        if (listed.has(orphan.name) || existsSync(vmDir(orphan.name).dir)) continue
        listed.add(orphan.name)
        const startedAt = getProcessStartUnixMs(orphan.pid)
        infos.push({ name: orphan.name, provider: PROVIDER, state: 'unknown', ...(startedAt === null ? {} : { createdAt: new Date(startedAt).toISOString() }) })
      }
      return infos.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    },

    probe: () => probeQemu(config, machines),

    /** Its QEMU process (pid + start time from process.json) still runs. */
    async isRunning(record: VmRecord): Promise<boolean> {
      const recorded = await vmDir(validateVmName(record.name, PROVIDER)).readProcess().catch(() => undefined)
      return recorded !== undefined && isProcessAlive(recorded)
    },

    describe: describeQemuVm,
    shell: getQemuShellCommand,

    fingerprint: (spec) => getQemuFingerprint(config, spec),

    async close(): Promise<void> {
      const transports = [...bootTransports.values()]
      bootTransports.clear()
      await forwards.closeAll()
      await Promise.all(transports.map((transport) => transport.close()))
    },
  }
  if (config.options.snapshot === 'auto') {
    provider.reset = async (name: string): Promise<VmRecord> => {
      validateVmName(name, PROVIDER)
      const dir = vmDir(name)
      let record: VmRecord | undefined
      try {
        record = await dir.readRecord()
      } catch (error) {
        throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation: 'reset', vm: name, message: `VM ${name} cannot be reset: ${(error as Error).message}`, cause: error })
      }
      if (!record) throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation: 'reset', vm: name, message: `VM ${name} does not exist (no ${dir.path('record')})` })
      const binary = await machines.requireBinary('reset')
      const machine = await machines.resolve(record.spec, binary)
      if (!machines.canSnapshot(machine)) {
        throw new VmPoolError({ code: 'VMPOOL_SNAPSHOT_INVALID', provider: PROVIDER, operation: 'reset', vm: name, message: `VM ${name} cannot be reset to a snapshot: its image ${machine.image.dir} has neither a kernel nor a disk` })
      }
      // The guest is replaced: forwards into the old one end with it.
      await forwards.closeVm(name)
      await dropBootTransport(name)
      const old = await dir.readProcess()
      // The old guest's state is thrown away: no graceful shutdown needed.
      await stopQemuOf(dir, false)
      await dir.removeInstanceFiles()
      const keyPath = dir.path('clientKey')
      try {
        const started = await machines.startStrategy(machine, binary).start({ vm: name, dir, privateKey: await readFile(keyPath), preferredPort: old?.port })
        const next: VmRecord = { ...record, data: makeRecordData(started, { keyPath, vmDir: dir.dir, image: machine.image }) }
        await dir.writeRecord(next)
        adoptBootTransport(name, started.transport)
        debug('%s was reset to snapshot %s (127.0.0.1:%d, %d ms)', name, started.restoredFrom, started.identity.port, started.bootMs)
        return next
      } catch (error) {
        // A VM that could not be reset is not half-kept: it is gone, as a failed create leaves nothing.
        await stopQemuOf(dir, false)
        await rm(dir.dir, { recursive: true, force: true })
        throw error
      }
    }
  }
  return provider
}

function makeRecordData(started: StartedQemu, paths: { keyPath: string; vmDir: string; image: ResolvedImage }): Record<string, JsonValue> {
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
    ...(paths.image.sshMaxSessions === undefined ? {} : { sshMaxSessions: paths.image.sshMaxSessions }),
  }
  return started.restoredFrom ? { ...data, restoredFrom: started.restoredFrom } : data
}
