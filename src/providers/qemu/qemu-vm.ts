/** A connected QEMU VM: every command over one ssh2 connection to the guest's forwarded port. */
import { SshTransport } from '../../transport/ssh-transport.js'
import { scaleTimeout } from '../../util/timeouts.js'
import type { ExecBufferResult, ExecOptions, ExecResult, Vm, VmRecord } from '../vm-provider.js'

/** One SSH attempt while the guest boots (the handshake runs on an emulated CPU). */
export const BOOT_SSH_ATTEMPT_TIMEOUT_MS = 15_000
/**
 * Exec channels per connection to the guest. Dropbear 2022.83 (Debian 12) aborts the whole
 * connection ("Failed assertion (common-channel.c:705): `!channel->sent_close'") when several
 * channels close at once, so concurrent execs on one VM queue on a single channel instead.
 */
const GUEST_MAX_CHANNELS = 1

/** A QEMU VM; `execBuffer` returns stdout as bytes. */
export interface QemuVm extends Vm {
  execBuffer(command: string | string[], options?: ExecOptions): Promise<ExecBufferResult>
  putFile(path: string, data: string | Buffer): Promise<void>
  getFile(path: string): Promise<Buffer>
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
  /** `readyTimeoutMs` per attempt while the guest boots; the transport's default otherwise. */
  booting?: boolean
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
    maxChannels: GUEST_MAX_CHANNELS,
    provider: 'qemu',
    vm: address.vm,
  })
}

export function createQemuVm(record: VmRecord, transport: SshTransport): QemuVm {
  return {
    name: record.name,
    provider: 'qemu',
    record,
    exec: (command: string | string[], options?: ExecOptions): Promise<ExecResult> => transport.exec(command, options),
    execBuffer: (command: string | string[], options?: ExecOptions) => transport.execBuffer(command, options),
    putFile: (path: string, data: string | Buffer) => transport.putFile(path, data),
    getFile: (path: string) => transport.getFile(path),
    close: () => transport.close(),
    [Symbol.asyncDispose]: () => transport.close(),
  }
}
