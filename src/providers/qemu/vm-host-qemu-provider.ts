/**
 * `qemuProvider({ host, ... })`: QEMU on a VM host reached over SSH (docs/providers.md, "QEMU on a VM
 * host"). Everything that touches the host goes through `SshVmHost` (one ssh2 transport): the VM dirs
 * and QEMU processes live there, laid out as the local provider lays them out (qemu-vm-dir.ts), and each
 * guest's SSH is reached through a direct-tcpip channel to its hostfwd port on the host's 127.0.0.1.
 * Every VM cold-boots (no snapshots); records hold how to reach the host, never a private key.
 */
import { posix } from 'node:path'
import { formatZodError } from '../../config/zod-error.js'
import { VmPoolError, invalidOptions, isVmPoolError } from '../../errors.js'
import { SSH_READY_TIMEOUT_MS, type SshTransport } from '../../transport/ssh-transport.js'
import { createDebug } from '../../util/debug.js'
import { scaleTimeout } from '../../util/timeouts.js'
import { VM_NAME_PATTERN, validateVmName } from '../../util/vm-name.js'
import { VmPortForwards } from '../vm-port-forwards.js'
import type { JsonValue, ProviderProbe, VmInfo, VmRecord, VmSpec } from '../vm-provider.js'
import { waitForBoot, type BootProbe } from './boot-wait.js'
import { buildQemuArgs, type QemuMachine } from './qemu-command.js'
import { DELETE_GRACE_MS, KILL_WAIT_MS, QEMU_START_TIMEOUT_MS } from './qemu-process.js'
import type { QemuProvider } from './qemu-provider.js'
import { describeQemuVm, getQemuShellCommand, type VmHostRef } from './kept-vm-help.js'
import { getQemuFingerprint, type QemuConfig, type VmHostConfig } from './qemu-provider-options.js'
import { MAX_UNIX_SOCKET_PATH_BYTES, VM_DIR_FILES, qemuRecordDataSchema } from './qemu-vm-dir.js'
import { createQemuVm, makeGuestTransport, type QemuVm } from './qemu-vm.js'
import { identityCommand } from './start-strategy.js'
import { SshVmHost } from './ssh-vm-host.js'
import { VmHostMachineResolver } from './vm-host-machine.js'
import { DELETE_VM_SCRIPT, HAS_LINE_SCRIPT, IS_ALIVE_SCRIPT, LAUNCH_SCRIPT, LIST_VMS_SCRIPT, PREPARE_VM_DIR_SCRIPT, TAIL_SCRIPT, WRITE_FILE_SCRIPT } from './vm-host-scripts.js'

const PROVIDER = 'qemu'
/** One short script on the VM host (prepare a dir, read a key, write a record, list). Scaled. */
export const VM_HOST_SCRIPT_TIMEOUT_MS = 30_000
/** New ports tried when QEMU on the host could not bind the chosen one. */
const PORT_ATTEMPTS = 5
/** Guest SSH ports are picked at random from this range of the host's loopback (the host has no free-port helper). */
const PORT_RANGE = { from: 20_000, to: 60_000 }

const debug = createDebug('vm-pool:qemu')

export function vmHostQemuProvider(config: QemuConfig, vmHostConfig: VmHostConfig): QemuProvider {
  const host = new SshVmHost(vmHostConfig)
  const ref: VmHostRef = { host: vmHostConfig.host, port: vmHostConfig.port, user: vmHostConfig.user, hostKey: vmHostConfig.hostKey }
  const root = async () => posix.join(await host.resolvePath(vmHostConfig.stateDir ?? '~/.cache/vm-pool'), 'qemu')
  const machines = new VmHostMachineResolver(config, host, root)
  const scriptTimeout = () => scaleTimeout(VM_HOST_SCRIPT_TIMEOUT_MS)
  const bootTransports = new Map<string, SshTransport>()
  const forwards = new VmPortForwards()
  const guestTransport = (vm: string, port: number, machine: { username: string; hostKey: string; sshMaxSessions?: number | undefined }, privateKey: Buffer, booting: boolean) =>
    makeGuestTransport({ vm, port, username: machine.username, hostKey: machine.hostKey, privateKey, maxChannels: machine.sshMaxSessions, booting, tunnel: () => host.openTcp(port) })
  const dropBootTransport = async (name: string) => {
    const transport = bootTransports.get(name)
    bootTransports.delete(name)
    await transport?.close()
  }
  const removeVmDir = (dir: string, graceMs: number) => host.runOk('deleting a VM', DELETE_VM_SCRIPT, [dir, String(Math.ceil(scaleTimeout(graceMs) / 100))], { timeoutMs: scaleTimeout(graceMs + KILL_WAIT_MS) + scriptTimeout() })

  /** Start QEMU on the host (a random loopback port, another one when it was taken); returns pid and port. */
  async function launch(name: string, dir: string, machine: QemuMachine): Promise<{ pid: number; port: number }> {
    const file = (key: keyof typeof VM_DIR_FILES) => posix.join(dir, VM_DIR_FILES[key])
    if (Buffer.byteLength(file('qmp')) > MAX_UNIX_SOCKET_PATH_BYTES) throw invalidOptions(`the path of QEMU's monitor socket on the VM host is too long (${file('qmp')})`, { provider: PROVIDER, vm: name, hint: 'use a shorter hostStateDir' })
    const disk = machine.image.disk ? file('disk') : undefined
    if (machine.image.disk) {
      const overlay = ['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', machine.image.diskFormat, '-b', machine.image.disk, file('disk'), ...(machine.diskBytes === undefined ? [] : [String(machine.diskBytes)])]
      await host.runOk('creating the disk overlay', '"$@"', overlay, { timeoutMs: scriptTimeout(), vm: name })
    }
    for (let attempt = 1; ; attempt++) {
      const port = PORT_RANGE.from + Math.floor(Math.random() * (PORT_RANGE.to - PORT_RANGE.from))
      const args = buildQemuArgs(machine, { name, sshPort: port, pidFile: file('pid'), serialLog: file('serial'), qmpSocket: file('qmp'), daemonize: true, disk })
      debug('starting %s on %s: %s %s', name, host.id, machines.binary, args.join(' '))
      const started = await host.run(LAUNCH_SCRIPT, [file('pid'), machines.binary, ...args], { timeoutMs: scaleTimeout(QEMU_START_TIMEOUT_MS) })
      const pid = Number(started.stdout.trim())
      if (started.exitCode === 0 && Number.isInteger(pid) && pid > 0) return { pid, port }
      if (/host forwarding|Address already in use/i.test(started.stderr) && attempt < PORT_ATTEMPTS) continue
      throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `QEMU failed to start on VM host ${host.id} (exit code ${started.exitCode}${started.timedOut ? ', QEMU_START_TIMEOUT_MS ran out' : ''}): ${started.stderr.trim() || 'no error output'}`, details: { accel: machine.accel, image: machine.image.dir } })
    }
  }

  function bootProbe(pid: number, dir: string): BootProbe {
    const serial = posix.join(dir, VM_DIR_FILES.serial)
    return {
      isAlive: async () => (await host.run(IS_ALIVE_SCRIPT, [String(pid), posix.join(dir, VM_DIR_FILES.pid)], { timeoutMs: scriptTimeout() })).exitCode === 0,
      hasConsoleLine: async (marker) => (await host.run(HAS_LINE_SCRIPT, [serial, marker], { timeoutMs: scriptTimeout() })).exitCode === 0,
      consoleTail: async () => {
        const tail = await host.run(TAIL_SCRIPT, [serial, '25'], { timeoutMs: scriptTimeout() }).catch(() => undefined)
        if (!tail || tail.exitCode === 3) return '  (no console log)'
        const lines = tail.stdout.split('\n').filter((line) => line.trim() !== '')
        return lines.length === 0 ? '  (no console output)' : lines.map((line) => `  | ${line}`).join('\n')
      },
    }
  }

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
        const startedAt = performance.now()
        const { pid, port } = await launch(name, dir, machine)
        transport = guestTransport(name, port, image, privateKey, true)
        await waitForBoot({
          vm: name,
          transport,
          identity: { pid, host: host.id, startTime: null, port, accel: machine.accel },
          serialLog: posix.join(dir, VM_DIR_FILES.serial),
          timeoutName: 'BOOT_TIMEOUT_MS',
          timeoutMs: config.bootTimeoutMs(),
          startedAt,
          bootMarker: image.bootMarker,
          readyCommand: () => identityCommand(name, false),
          context: ` (on VM host ${host.id})`,
          probe: bootProbe(pid, dir),
        })
        const bootMs = Math.round(performance.now() - startedAt)
        const data: Record<string, JsonValue> = { host: '127.0.0.1', port, username: image.username, hostKey: image.hostKey, keyPath: posix.join(dir, VM_DIR_FILES.clientKey), vmDir: dir, pid, accel: machine.accel, image: image.dir, bootMs, vmHost: { ...ref } }
        if (image.sshMaxSessions !== undefined) data.sshMaxSessions = image.sshMaxSessions
        const record: VmRecord = { name, provider: PROVIDER, createdAt: new Date().toISOString(), spec: { ...spec, labels: spec.labels ? { ...spec.labels } : undefined }, data }
        if (record.spec.labels === undefined) delete record.spec.labels
        await host.runOk('writing the VM record', WRITE_FILE_SCRIPT, [posix.join(dir, VM_DIR_FILES.record)], { input: JSON.stringify(record, null, 2), timeoutMs: scriptTimeout(), vm: name })
        void bootTransports.get(name)?.close()
        bootTransports.set(name, transport)
        debug('%s is up on %s, guest port %d (%s, cold boot, %d ms)', name, host.id, port, machine.accel, bootMs)
        return record
      } catch (error) {
        // Nothing half-made survives a failed create: kill QEMU, remove the VM dir on the host.
        await transport?.close()
        await removeVmDir(dir, 0).catch((cleanup: unknown) => debug('%s: cleanup after a failed create: %s', name, (cleanup as Error).message))
        throw error
      }
    },

    async connect(record: VmRecord): Promise<QemuVm> {
      const name = validateVmName(record.name, PROVIDER)
      const parsed = qemuRecordDataSchema.safeParse(record.data)
      if (!parsed.success) throw invalidOptions(`not a qemu VM record: ${formatZodError(parsed.error, record.data)}`, { provider: PROVIDER, vm: name })
      const data = parsed.data
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
      transport ??= guestTransport(name, data.port, data, Buffer.from(read.stdout), false)
      return createQemuVm({ record, transport, qemu: { on: 'vm-host' }, forwards })
    },

    async delete(name: string): Promise<void> {
      validateVmName(name, PROVIDER)
      await forwards.closeVm(name)
      await dropBootTransport(name)
      try {
        await removeVmDir(posix.join(await root(), name), DELETE_GRACE_MS)
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
        Object.assign(details, { binary: machines.binary, accel: accel.accel, accelReason: accel.reason, snapshot: 'off on a VM host: every VM boots' })
        return { usable: true, reason: `QEMU on VM host ${host.id} with ${accel.accel.toUpperCase()}, image ${config.options.image} present`, details }
      } catch (error) {
        return { usable: false, reason: isVmPoolError(error) ? error.shortMessage : String(error), details, hint: isVmPoolError(error) ? error.hint : undefined }
      }
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
  return provider
}
