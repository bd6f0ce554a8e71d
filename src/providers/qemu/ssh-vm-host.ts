/**
 * The VM host as the QEMU provider sees it: run a script there, read and write its files, and open a TCP
 * channel to a port on its loopback (the guest's forwarded SSH) — all through ONE ssh2 transport to the
 * host, so a guest is never reached through a port opened on the network.
 */
import type { Duplex } from 'node:stream'
import { posix } from 'node:path'
import { VmPoolError } from '../../errors.js'
import type { ExecResult } from '../../transport/exec-types.js'
import { SshTransport } from '../../transport/ssh-transport.js'
import type { VmHostConfig } from './qemu-provider-options.js'

/** Exec channels per connection to the VM host (OpenSSH's MaxSessions is 10: two stay free). */
export const VM_HOST_MAX_CHANNELS = 8
/** Connections to the VM host; each guest connection is a channel on one of them. */
export const VM_HOST_MAX_CONNECTIONS = 4

export interface VmHostRunOptions {
  timeoutMs?: number
  input?: string | Buffer
}

export class SshVmHost {
  /** `user@host:port`: what records and fingerprints name the host by. */
  readonly id: string
  readonly config: VmHostConfig
  #transport: Promise<SshTransport> | undefined
  #home: Promise<string> | undefined

  constructor(config: VmHostConfig) {
    this.config = config
    this.id = `${config.user}@${config.host}:${config.port}`
  }

  /** `sh -c script sh ...args` on the host: the arguments are never parsed as shell text. */
  async run(script: string, args: readonly string[] = [], options: VmHostRunOptions = {}): Promise<ExecResult> {
    return (await this.#getTransport()).exec(['sh', '-c', script, 'sh', ...args], options)
  }

  /** Like `run`, failing with VMPOOL_EXEC_FAILED (naming `what`) when the script does not exit 0. */
  async runOk(what: string, script: string, args: readonly string[] = [], options: VmHostRunOptions & { vm?: string } = {}): Promise<string> {
    const result = await this.run(script, args, options)
    if (result.exitCode !== 0) {
      throw new VmPoolError({ code: 'VMPOOL_EXEC_FAILED', provider: 'qemu', vm: options.vm, operation: what, message: `${what} on VM host ${this.id} failed (exit code ${result.exitCode}${result.timedOut ? ', timed out' : ''}): ${result.stderr.trim() || 'no error output'}` })
    }
    return result.stdout
  }

  /** The SSH user's home directory there, asked once. */
  home(): Promise<string> {
    this.#home ??= this.runOk('reading $HOME', 'printf %s "$HOME"').then((home) => {
      if (!posix.isAbsolute(home)) throw new VmPoolError({ code: 'VMPOOL_PROVIDER_UNAVAILABLE', provider: 'qemu', message: `VM host ${this.id} has no usable $HOME (${JSON.stringify(home)})`, hint: 'give hostStateDir and imageDir as absolute paths' })
      return home
    })
    this.#home.catch(() => (this.#home = undefined))
    return this.#home
  }

  /** An absolute path on the host: `~/x` and relative paths are under the SSH user's home. */
  async resolvePath(path: string): Promise<string> {
    if (posix.isAbsolute(path)) return posix.normalize(path)
    return posix.join(await this.home(), path.replace(/^~(\/|$)/, ''))
  }

  /** A stream to `127.0.0.1:port` as the host sees it: a direct-tcpip channel of the connection to the host. */
  async openTcp(port: number): Promise<Duplex> {
    return (await this.#getTransport()).openTcp('127.0.0.1', port)
  }

  /** A stream to the unix socket `path` on the host (a QEMU monitor): OpenSSH's streamlocal forwarding. */
  async openUnix(path: string): Promise<Duplex> {
    return (await this.#getTransport()).openUnix(path)
  }

  async close(): Promise<void> {
    const transport = this.#transport
    this.#transport = undefined
    await (await transport?.catch(() => undefined))?.close()
  }

  #getTransport(): Promise<SshTransport> {
    this.#transport ??= this.config.privateKey().then(
      (privateKey) =>
        new SshTransport({ host: this.config.host, port: this.config.port, username: this.config.user, privateKey, hostKey: this.config.hostKeyFingerprint, maxChannels: VM_HOST_MAX_CHANNELS, maxConnections: VM_HOST_MAX_CONNECTIONS, provider: 'qemu' }),
    )
    this.#transport.catch(() => (this.#transport = undefined))
    return this.#transport
  }
}
