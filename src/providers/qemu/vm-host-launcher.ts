/**
 * QEMU processes on a VM host: start one detached (a random loopback port there, another when it was
 * taken), watch it boot (its pid and console through SSH: a `BootProbe`), stop it, and reach its guest
 * through the connection to the host. The VM-host counterpart of qemu-process.ts + cold-boot-strategy.ts.
 */
import { posix } from 'node:path'
import { VmPoolError, invalidOptions } from '../../errors.js'
import type { SshTransport } from '../../transport/ssh-transport.js'
import { createDebug } from '../../util/debug.js'
import { scaleTimeout } from '../../util/timeouts.js'
import type { BootProbe } from './boot-wait.js'
import { waitForBoot } from './boot-wait.js'
import { buildQemuArgs, type QemuMachine } from './qemu-command.js'
import { KILL_WAIT_MS, QEMU_START_TIMEOUT_MS } from './qemu-process.js'
import type { QemuConfig } from './qemu-provider-options.js'
import { MAX_UNIX_SOCKET_PATH_BYTES, VM_DIR_FILES, type VmDirFile } from './qemu-vm-dir.js'
import { makeGuestTransport } from './qemu-vm.js'
import type { SshVmHost } from './ssh-vm-host.js'
import type { VmHostMachineResolver } from './vm-host-machine.js'
import { HAS_LINE_SCRIPT, IS_ALIVE_SCRIPT, LAUNCH_EXITED_AT_ONCE, LAUNCH_SCRIPT, STOP_QEMU_SCRIPT, TAIL_SCRIPT } from './vm-host-scripts.js'

/** One short script on the VM host (prepare a dir, read a key, write a record, list). Scaled. */
export const VM_HOST_SCRIPT_TIMEOUT_MS = 30_000
/** New ports tried when QEMU on the host could not bind the chosen one. */
const PORT_ATTEMPTS = 5
/** Guest SSH ports are picked at random from this range of the host's loopback (the host has no free-port helper). */
const PORT_RANGE = { from: 20_000, to: 60_000 }

const debug = createDebug('vm-pool:qemu')

/** A QEMU started on the VM host: its pid there and the guest's SSH port on the host's loopback. */
export interface HostQemu {
  pid: number
  port: number
}

/** What a guest's SSH needs: the image's user, host key and channel limit. */
export interface GuestLogin {
  username: string
  hostKey: string
  sshMaxSessions?: number | undefined
}

export class VmHostLauncher {
  readonly #host: SshVmHost
  readonly #machines: VmHostMachineResolver
  readonly #config: QemuConfig

  constructor(host: SshVmHost, machines: VmHostMachineResolver, config: QemuConfig) {
    this.#host = host
    this.#machines = machines
    this.#config = config
  }

  scriptTimeoutMs(): number {
    return scaleTimeout(VM_HOST_SCRIPT_TIMEOUT_MS)
  }

  /** Start QEMU for `instance` (the `-name`: a VM or a snapshot template) in `dir` on the host. */
  async launch(options: { vm: string; instance: string; dir: string; machine: QemuMachine; incoming?: string; preferredPort?: number; diskBacking?: string }): Promise<HostQemu> {
    const { vm, dir, machine } = options
    const file = (key: VmDirFile) => posix.join(dir, VM_DIR_FILES[key])
    if (Buffer.byteLength(file('qmp')) > MAX_UNIX_SOCKET_PATH_BYTES) throw invalidOptions(`the path of QEMU's monitor socket on the VM host is too long (${file('qmp')})`, { provider: 'qemu', vm, hint: 'use a shorter hostStateDir' })
    const disk = machine.image.disk ? file('disk') : undefined
    if (machine.image.disk) {
      const overlay = ['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', machine.image.diskFormat, '-b', machine.image.disk, file('disk'), ...(machine.diskBytes === undefined ? [] : [String(machine.diskBytes)])]
      await this.#host.runOk('creating the disk overlay', '"$@"', overlay, { timeoutMs: this.scriptTimeoutMs(), vm })
    }
    for (let attempt = 1; ; attempt++) {
      const port = attempt === 1 && options.preferredPort ? options.preferredPort : PORT_RANGE.from + Math.floor(Math.random() * (PORT_RANGE.to - PORT_RANGE.from))
      const args = buildQemuArgs(machine, { name: options.instance, sshPort: port, pidFile: file('pid'), serialLog: file('serial'), qmpSocket: file('qmp'), daemonize: true, incoming: options.incoming, disk })
      debug('starting %s on %s: %s %s', options.instance, this.#host.id, this.#machines.binary, args.join(' '))
      const started = await this.#host.run(LAUNCH_SCRIPT, [file('pid'), this.#machines.binary, ...args], { timeoutMs: scaleTimeout(QEMU_START_TIMEOUT_MS) })
      const pid = Number(started.stdout.trim())
      if (started.exitCode === 0 && Number.isInteger(pid) && pid > 0) return { pid, port }
      if (started.exitCode === LAUNCH_EXITED_AT_ONCE) {
        throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: 'qemu', operation: 'create', vm, message: `QEMU exited right after it started on VM host ${this.#host.id}${options.incoming ? ' (while loading the saved guest state)' : ''}; the guest's console ended with:\n${await this.bootProbe({ pid: 0, port }, dir).consoleTail()}`, details: { qemuExited: true, accel: machine.accel, restore: options.incoming !== undefined } })
      }
      if (/host forwarding|Address already in use/i.test(started.stderr) && attempt < PORT_ATTEMPTS) continue
      throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: 'qemu', operation: 'create', vm, message: `QEMU failed to start on VM host ${this.#host.id} (exit code ${started.exitCode}${started.timedOut ? ', QEMU_START_TIMEOUT_MS ran out' : ''}): ${started.stderr.trim() || 'no error output'}`, details: { accel: machine.accel, image: machine.image.dir, restore: options.incoming !== undefined } })
    }
  }

  /** How the boot wait sees a QEMU on the host: its pid (checked against its pid file) and its console file. */
  bootProbe(qemu: HostQemu, dir: string): BootProbe {
    const serial = posix.join(dir, VM_DIR_FILES.serial)
    return {
      isAlive: async () => (await this.#host.run(IS_ALIVE_SCRIPT, [String(qemu.pid), posix.join(dir, VM_DIR_FILES.pid)], { timeoutMs: this.scriptTimeoutMs() })).exitCode === 0,
      hasConsoleLine: async (marker) => (await this.#host.run(HAS_LINE_SCRIPT, [serial, marker], { timeoutMs: this.scriptTimeoutMs() })).exitCode === 0,
      consoleTail: async () => {
        const tail = await this.#host.run(TAIL_SCRIPT, [serial, '25'], { timeoutMs: this.scriptTimeoutMs() }).catch(() => undefined)
        if (!tail || tail.exitCode === 3) return '  (no console log)'
        const lines = tail.stdout.split('\n').filter((line) => line.trim() !== '')
        return lines.length === 0 ? '  (no console output)' : lines.map((line) => `  | ${line}`).join('\n')
      },
    }
  }

  /** The guest's SSH on the host's loopback, through a direct-tcpip channel of the connection to the host. */
  guestTransport(vm: string, port: number, login: GuestLogin, privateKey: Buffer, booting: boolean): SshTransport {
    return makeGuestTransport({ vm, port, username: login.username, hostKey: login.hostKey, privateKey, maxChannels: login.sshMaxSessions, booting, tunnel: () => this.#host.openTcp(port) })
  }

  /** Cold boot in `dir` until `readyCommand` runs in the guest; on failure the QEMU is stopped (the dir stays). */
  async coldBoot(options: { vm: string; instance: string; dir: string; machine: QemuMachine; privateKey: Buffer; readyCommand: string; context: string; preferredPort?: number }): Promise<HostQemu & { transport: SshTransport; bootMs: number }> {
    const startedAt = performance.now()
    const qemu = await this.launch(options)
    const transport = this.guestTransport(options.vm, qemu.port, options.machine.image, options.privateKey, true)
    try {
      await waitForBoot({
        vm: options.vm,
        transport,
        identity: { pid: qemu.pid, host: this.#host.id, startTime: null, port: qemu.port, accel: options.machine.accel },
        serialLog: posix.join(options.dir, VM_DIR_FILES.serial),
        timeoutName: 'BOOT_TIMEOUT_MS',
        timeoutMs: this.#config.bootTimeoutMs(),
        timeoutFromOption: this.#config.bootTimeoutFromOption(),
        startedAt,
        bootMarker: options.machine.image.bootMarker,
        readyCommand: () => options.readyCommand,
        context: options.context,
        probe: this.bootProbe(qemu, options.dir),
      })
    } catch (error) {
      await transport.close()
      await this.stop(options.dir, 0, 'instance').catch((stopError: unknown) => debug('%s: stopping after a failed boot: %s', options.vm, (stopError as Error).message))
      throw error
    }
    return { ...qemu, transport, bootMs: Math.round(performance.now() - startedAt) }
  }

  /** Stop every QEMU of `dir` (SIGTERM, SIGKILL after `graceMs` scaled), then remove the dir or only one run's files. */
  async stop(dir: string, graceMs: number, remove: 'dir' | 'instance'): Promise<void> {
    await this.#host.runOk('stopping QEMU', STOP_QEMU_SCRIPT, [dir, String(Math.ceil(scaleTimeout(graceMs) / 100)), remove], { timeoutMs: scaleTimeout(graceMs + KILL_WAIT_MS) + this.scriptTimeoutMs() })
  }
}
