/** A connected QEMU VM: commands, files and port forwards over a small pool of ssh2 connections to the guest. */
import type { Duplex } from 'node:stream'
import { VmPoolError } from '../../errors.js'
import { validateForwardPorts, type ForwardPortOptions, type PortForward } from '../../transport/port-forward.js'
import { SshTransport } from '../../transport/ssh-transport.js'
import { scaleTimeout } from '../../util/timeouts.js'
import { withExecLog } from '../exec-log.js'
import type { VmPortForwards } from '../vm-port-forwards.js'
import type { ExecBufferResult, ExecOptions, ExecResult, Vm, VmRecord } from '../vm-provider.js'
import { GuestRawTransfer } from './guest-raw-transfer.js'
import { addHostForward } from './qemu-hostfwd.js'

/** One SSH attempt while the guest boots (the handshake runs on an emulated CPU). */
export const BOOT_SSH_ATTEMPT_TIMEOUT_MS = 15_000
/**
 * Exec channels per connection when the image's manifest does not say (`sshMaxSessions`): the minimal
 * image's dropbear 2022.83 aborts the whole connection ("Failed assertion (common-channel.c:705):
 * `!channel->sent_close'") when a channel opens while another one's command exits (mkj/dropbear#321),
 * so each connection carries one command and concurrent execs get connections of their own.
 */
export const GUEST_DEFAULT_MAX_CHANNELS = 1
/**
 * Connections per transport to a guest: 32 concurrent execs with one channel each. Each costs an SSH
 * handshake once (about 0.2 s of emulated CPU under TCG) and a small server process in the guest; idle
 * ones are kept for the next burst.
 */
export const GUEST_MAX_CONNECTIONS = 32
/**
 * Ciphers for guest connections, most wanted first: dropbear has no AES-GCM, and under TCG its
 * chacha20-poly1305 costs the guest about half the CPU of AES-CTR + HMAC per byte (measured with
 * bench/inside-vm.ts), so file transfers are faster with it.
 */
export const GUEST_CIPHERS = ['chacha20-poly1305@openssh.com', 'aes128-gcm@openssh.com', 'aes256-gcm@openssh.com', 'aes128-ctr', 'aes256-ctr']

/** How `QemuVm.forwardPort` forwards: an SSH direct-tcpip channel per connection, or QEMU's own `hostfwd`. */
export type QemuForwardVia = 'ssh' | 'hostfwd'

/** A QEMU VM; `execBuffer` returns stdout as bytes. */
export interface QemuVm extends Vm {
  execBuffer(command: string | string[], options?: ExecOptions): Promise<ExecBufferResult>
  /**
   * `via: 'ssh'` (the default) reaches any server in the guest, also one bound to its 127.0.0.1;
   * `via: 'hostfwd'` makes QEMU forward the port itself (no SSH on the path; the guest server must
   * listen on its network address, e.g. 0.0.0.0). docs/qemu.md compares them.
   */
  forwardPort(guestPort: number, options?: ForwardPortOptions & { via?: QemuForwardVia }): Promise<PortForward>
  close(): Promise<void>
}

export interface GuestAddress {
  vm: string
  /** @default '127.0.0.1' (QEMU forwards the guest's port 22 to loopback only) */
  host?: string
  port: number
  username: string
  hostKey: string
  privateKey: Buffer
  /** The image's `sshMaxSessions`. @default GUEST_DEFAULT_MAX_CHANNELS */
  maxChannels?: number | undefined
  /** `readyTimeoutMs` per attempt while the guest boots; the transport's default otherwise. */
  booting?: boolean
  /** The guest's port is on a VM host: reach it through a channel of the SSH connection to that host. */
  tunnel?: (() => Promise<Duplex>) | undefined
}

/** The SSH transport to a guest's forwarded port, its host key pinned. */
export function makeGuestTransport(address: GuestAddress): SshTransport {
  return new SshTransport({
    host: address.host ?? '127.0.0.1',
    port: address.port,
    username: address.username,
    privateKey: address.privateKey,
    hostKey: address.hostKey,
    ...(address.booting ? { readyTimeoutMs: scaleTimeout(BOOT_SSH_ATTEMPT_TIMEOUT_MS) } : {}),
    maxChannels: address.maxChannels ?? GUEST_DEFAULT_MAX_CHANNELS,
    maxConnections: GUEST_MAX_CONNECTIONS,
    ciphers: GUEST_CIPHERS,
    ...(address.tunnel ? { tunnel: address.tunnel } : {}),
    provider: 'qemu',
    vm: address.vm,
  })
}

export interface QemuVmParts {
  record: VmRecord
  transport: SshTransport
  /**
   * Where QEMU runs. `local`: its monitor socket, for `hostfwd` forwards. `vm-host`: on a VM host, where
   * QEMU's hostfwd would listen (`via: 'hostfwd'` is refused) and the guest's gateway is that host, not
   * this one (no raw file path: files go over SSH).
   */
  qemu: { on: 'local'; qmpSocket: string } | { on: 'vm-host' }
  /** The provider's registry: `delete(name)` closes this Vm's forwards too. */
  forwards: VmPortForwards
}

export function createQemuVm({ record, transport, qemu, forwards: registry }: QemuVmParts): QemuVm {
  const { forwards, release } = registry.open(record.name)
  // On a VM host the guest's gateway and QEMU's hostfwd are that host, not this one: no raw path, files go over SSH.
  const raw = qemu.on === 'local' ? new GuestRawTransfer((command, options) => transport.exec(command, options), record.name, (guestPort) => addHostForward(qemu.qmpSocket, guestPort, undefined, record.name)) : undefined
  const close = async () => {
    await release()
    await transport.close()
  }
  return withExecLog<QemuVm>({
    name: record.name,
    provider: 'qemu',
    record,
    exec: (command: string | string[], options?: ExecOptions): Promise<ExecResult> => transport.exec(command, options),
    execBuffer: (command: string | string[], options?: ExecOptions) => transport.execBuffer(command, options),
    // Big files skip SSH's encryption when the guest can (guest-raw-transfer.ts); SSH otherwise.
    async putFile(path: string, data: string | Buffer) {
      const bytes = typeof data === 'string' ? Buffer.from(data) : data
      if (!(await raw?.put(path, bytes))) await transport.putFile(path, bytes)
    },
    getFile: async (path: string) => (await raw?.get(path)) ?? transport.getFile(path),
    putDirectory: (localDir: string, guestDir: string) => transport.putDirectory(localDir, guestDir),
    getDirectory: (guestDir: string, localDir: string) => transport.getDirectory(guestDir, localDir),
    async forwardPort(guestPort, options = {}) {
      validateForwardPorts(guestPort, options, { provider: 'qemu', vm: record.name })
      if (options.via === 'hostfwd' && qemu.on === 'vm-host') {
        throw new VmPoolError({ code: 'VMPOOL_UNSUPPORTED', provider: 'qemu', vm: record.name, operation: 'forwardPort', message: `forwardPort(${guestPort}, { via: 'hostfwd' }): QEMU runs on a VM host, where its hostfwd would listen`, hint: "leave out `via` (the default 'ssh' forward goes through the VM host's SSH connection)" })
      }
      const forward = options.via === 'hostfwd' && qemu.on === 'local' ? await addHostForward(qemu.qmpSocket, guestPort, options.hostPort, record.name) : await transport.forwardPort(guestPort, options.hostPort === undefined ? {} : { hostPort: options.hostPort })
      return forwards.track(forward)
    },
    close,
    [Symbol.asyncDispose]: close,
  })
}
