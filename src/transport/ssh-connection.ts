import type { Duplex } from 'node:stream'
import type { Client as SshClient, ClientChannel, ConnectConfig } from 'ssh2'
import { z } from 'zod'
import { VmPoolError, VmPoolTimeoutError } from '../errors.js'
import { createDebug } from '../util/debug.js'
import { getSshFingerprint, loadSsh2 } from './ssh-keys.js'

/** Time for TCP connect + SSH handshake + auth, before scaling by `VM_POOL_TIMEOUT_SCALE`. */
export const SSH_READY_TIMEOUT_MS = 20_000
/** SSH keepalive period: a dead peer is noticed after about three of these. */
export const SSH_KEEPALIVE_INTERVAL_MS = 10_000
/** After `end()`, how long to wait for the peer's close before giving up on it (a vanished peer never sends it). */
const CLOSE_WAIT_MS = 1_000

const debug = createDebug('vm-pool:ssh')

/**
 * The fields every option object that names an SSH host shares (SshTransport, sshProvider's hosts,
 * a remote multipassProvider), so their rules and docs are written once.
 */
export const sshEndpointFields = {
  host: z.string().min(1),
  /** @default 22 */
  port: z.number().int().min(1).max(65_535).default(22),
  /** Unencrypted OpenSSH or PEM private key text. Never logged, never part of an error, a record or a lease. */
  privateKey: z.union([z.string().min(1), z.instanceof(Buffer)]),
  /**
   * The pinned host key: an OpenSSH public key line (`ssh-ed25519 AAAA...`) or a `SHA256:...`
   * fingerprint. A server presenting another key is refused (`VMPOOL_HOST_KEY_MISMATCH`).
   * Without it any host key is accepted — only for hosts reached over a trusted path.
   */
  hostKey: z.string().min(1).optional(),
}

export interface SshConnectionConfig {
  host: string
  port: number
  username: string
  privateKey: string | Buffer
  readyTimeoutMs: number
  /** Normalized `SHA256:` fingerprint of the pinned host key; undefined = accept any. */
  hostKeyFingerprint: string | undefined
  /** Cipher preference, most wanted first; undefined = ssh2's default order. */
  ciphers?: string[] | undefined
  /**
   * Reach the server through this stream instead of a TCP connection to `host:port` (a channel of
   * another SSH connection: a jump host). `host:port` then only names the server in messages.
   */
  tunnel?: (() => Promise<Duplex>) | undefined
  /** For error messages. */
  provider: string
  vm?: string | undefined
}

/**
 * The server answered a channel open with a refusal (SSH_MSG_CHANNEL_OPEN_FAILURE): the connection is
 * alive and its other channels run on. OpenSSH refuses a session beyond `MaxSessions`, and sessions whose
 * channels just closed still count until its next loop frees them (a close and an open read together).
 * The pool (ssh-connection-pool.ts) waits and asks again instead of failing the exec.
 */
export class SshChannelRefusedError extends VmPoolError {}

/** ssh2 sets `reason` only on a refusal the server sent; a dropped connection fails opens without one. */
function refusedByServer(error: unknown): boolean {
  return (error as { reason?: unknown }).reason !== undefined
}

/**
 * One persistent ssh2 connection, opened on first use: the handshake, the host key pin, the mapping
 * of connect failures to VmPoolErrors, and the "reconnect once" rule for a connection that dropped.
 */
export class SshConnection {
  readonly #config: SshConnectionConfig
  #connection: Promise<SshClient> | undefined
  /** The client behind #connection, also while its handshake runs. */
  #client: SshClient | undefined

  constructor(config: SshConnectionConfig) {
    this.#config = config
  }

  /** `user@host:port`, for messages. */
  get target(): string {
    return `${this.#config.username}@${this.#config.host}:${this.#config.port}`
  }

  /** The connected client, connecting first if needed; rejects with the connect error. */
  getClient(): Promise<SshClient> {
    if (!this.#connection) {
      const connection = this.#open()
      this.#connection = connection
      connection.catch(() => {
        if (this.#connection === connection) this.#connection = undefined
      })
    }
    return this.#connection
  }

  /**
   * Open an exec channel; if the connection turns out to be dead, reconnect once and retry (the
   * command never started). A channel the server refuses rejects with SshChannelRefusedError and leaves
   * the connection alone: ending it would end the commands running on its other channels.
   * `onOpen` runs synchronously with the channel: a fast command's exit-status can arrive in the same
   * read as the exec reply, before an `await` could listen.
   */
  async openChannel(script: string, onOpen?: (channel: ClientChannel) => void): Promise<ClientChannel> {
    try {
      return await this.#onLiveClient(
        'exec channel',
        (client) =>
          new Promise<ClientChannel>((resolve, reject) => {
            client.exec(script, (error, channel) => {
              if (error) return reject(error)
              onOpen?.(channel)
              resolve(channel)
            })
          }),
        (error) => !refusedByServer(error),
      )
    } catch (error) {
      if (refusedByServer(error)) {
        throw new SshChannelRefusedError({
          code: 'VMPOOL_EXEC_FAILED',
          provider: this.#config.provider,
          vm: this.#config.vm,
          operation: 'exec',
          message: `${this.target} refused an exec channel: ${(error as Error).message}`,
          hint: "the server allows fewer sessions per connection than the transport's maxChannels (OpenSSH: MaxSessions, 10 by default; 0 allows none)",
          details: { reason: (error as { reason?: unknown }).reason },
          cause: error,
        })
      }
      throw this.#failed(error, 'exec', `could not start a command on ${this.target}`)
    }
  }

  /**
   * A direct-tcpip channel to `host:port` as seen from the server (a port forward); reconnects once like
   * `openChannel`. The server refusing the connection (nothing listens) rejects with VMPOOL_EXEC_FAILED.
   */
  async openTcp(host: string, port: number): Promise<ClientChannel> {
    try {
      return await this.#onLiveClient(
        'forward',
        (client) =>
          new Promise<ClientChannel>((resolve, reject) => {
            client.forwardOut('127.0.0.1', 0, host, port, (error, channel) => (error ? reject(error) : resolve(channel)))
          }),
        // A refused forward (nothing listening) is an answer, not a dead connection.
        (error) => !refusedByServer(error),
      )
    } catch (error) {
      throw this.#failed(error, 'forwardPort', `could not reach ${host}:${port} through ${this.target}`, 'is a server listening on that port in the VM?')
    }
  }

  /** A channel to the unix socket `path` on the server (OpenSSH's streamlocal forwarding); reconnects once like `openTcp`. */
  async openUnix(path: string): Promise<ClientChannel> {
    try {
      return await this.#onLiveClient(
        'unix socket forward',
        (client) =>
          new Promise<ClientChannel>((resolve, reject) => {
            client.openssh_forwardOutStreamLocal(path, (error, channel) => (error ? reject(error) : resolve(channel)))
          }),
        (error) => !refusedByServer(error),
      )
    } catch (error) {
      throw this.#failed(error, 'forward', `could not reach the unix socket ${path} through ${this.target}`, 'the server must allow streamlocal forwarding (OpenSSH: AllowStreamLocalForwarding, on by default)')
    }
  }

  /**
   * What a failed open rejects with: a connect error (auth, timeout, unreachable) as it is, since it says it
   * best; anything else as VMPOOL_EXEC_FAILED, `what` followed by the error's message.
   */
  #failed(error: unknown, operation: string, what: string, hint?: string): VmPoolError {
    if (error instanceof VmPoolError) return error
    return new VmPoolError({ code: 'VMPOOL_EXEC_FAILED', provider: this.#config.provider, vm: this.#config.vm, operation, message: `${what}: ${(error as Error).message}`, ...(hint ? { hint } : {}), cause: error })
  }

  /** `open` on the connection; when it fails in a way `deadConnection` accepts, drop that connection and try once more on a new one. */
  async #onLiveClient<T>(what: string, open: (client: SshClient) => Promise<T>, deadConnection: (error: unknown) => boolean): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const client = await this.getClient()
      try {
        return await open(client)
      } catch (error) {
        if (attempt > 0 || !deadConnection(error)) throw error
        debug('%s on %s failed (%s): reconnecting once', what, this.target, (error as Error).message)
        this.#forget(client)
        client.end()
      }
    }
  }

  /** Close the connection; the next `getClient` opens a new one. */
  async close(): Promise<void> {
    const client = this.#client
    this.#client = undefined
    this.#connection = undefined
    if (!client) return
    // Also ends a handshake still in progress (its pending connect rejects).
    await new Promise<void>((resolve) => {
      client.once('close', () => resolve())
      client.end()
      setTimeout(resolve, CLOSE_WAIT_MS).unref()
    })
  }

  #forget(client: SshClient): void {
    if (this.#client !== client) return
    this.#client = undefined
    this.#connection = undefined
  }

  async #open(): Promise<SshClient> {
    const config = this.#config
    const client = new (loadSsh2().Client)()
    this.#client = client
    let sock: Duplex | undefined
    if (config.tunnel) {
      try {
        sock = await config.tunnel()
      } catch (error) {
        if (error instanceof VmPoolError) throw error
        throw this.#connectError(error as Error, undefined)
      }
      // Closed while the tunnel opened: this connection is no longer wanted.
      if (this.#client !== client) {
        sock.destroy()
        throw new Error('the connection was closed while its tunnel opened')
      }
    }
    let hostKeyProblem: { got: string } | undefined
    const connectConfig: ConnectConfig = {
      host: config.host,
      port: config.port,
      username: config.username,
      privateKey: config.privateKey,
      readyTimeout: config.readyTimeoutMs,
      ...(sock ? { sock: sock as NonNullable<ConnectConfig['sock']> } : {}),
      keepaliveInterval: SSH_KEEPALIVE_INTERVAL_MS,
      keepaliveCountMax: 3,
      ...(config.ciphers ? { algorithms: { cipher: config.ciphers as NonNullable<ConnectConfig['algorithms']>['cipher'] } } : {}),
      hostVerifier: (key: Buffer) => {
        if (config.hostKeyFingerprint === undefined) return true
        const got = getSshFingerprint(key)
        if (got === config.hostKeyFingerprint) return true
        hostKeyProblem = { got }
        return false
      },
    }
    return new Promise<SshClient>((resolve, reject) => {
      let settled = false
      const fail = (error: Error & { level?: string }) => {
        if (settled) return
        settled = true
        client.end()
        reject(this.#connectError(error, hostKeyProblem))
      }
      client.once('ready', () => {
        settled = true
        debug('connected to %s', this.target)
        resolve(client)
      })
      client.on('error', (error: Error & { level?: string }) => {
        if (!settled) fail(error)
        else debug('connection to %s: %s', this.target, error.message)
      })
      client.once('close', () => {
        if (!settled) fail(new Error('connection closed during the handshake'))
        // Forget a dropped connection: the next exec opens a new one.
        this.#forget(client)
      })
      debug('connecting to %s', this.target)
      client.connect(connectConfig)
    })
  }

  #connectError(error: Error & { level?: string }, hostKeyProblem: { got: string } | undefined): VmPoolError {
    const config = this.#config
    const base = { provider: config.provider, vm: config.vm, operation: 'connect', cause: error }
    if (hostKeyProblem) {
      return new VmPoolError({
        ...base,
        code: 'VMPOOL_HOST_KEY_MISMATCH',
        message: `host key of ${config.host}:${config.port} is ${hostKeyProblem.got}, but ${config.hostKeyFingerprint} is pinned: refusing to connect`,
        hint: 'if the host was rebuilt on purpose, update the pinned key (for qemu: recreate the VM after `vm-pool image build --force`); otherwise something else answers on that port',
        details: { expected: config.hostKeyFingerprint, got: hostKeyProblem.got },
      })
    }
    if (error.level === 'client-authentication') {
      return new VmPoolError({
        ...base,
        code: 'VMPOOL_AUTH_FAILED',
        message: `ssh authentication as ${this.target} failed: the server did not accept the private key`,
        hint: 'check that the matching public key is in the authorized_keys of that user on the host',
      })
    }
    if (error.level === 'client-timeout') {
      return new VmPoolTimeoutError({
        ...base,
        message: `timed out after ${config.readyTimeoutMs} ms waiting for the ssh handshake with ${this.target} (SSH_READY_TIMEOUT_MS)`,
        timeoutName: 'SSH_READY_TIMEOUT_MS',
        timeoutMs: config.readyTimeoutMs,
        hint: 'is the host up and is sshd listening on that port? On slow machines set VM_POOL_TIMEOUT_SCALE=2',
      })
    }
    return new VmPoolError({
      ...base,
      code: 'VMPOOL_EXEC_FAILED',
      message: `could not connect to ${this.target}: ${error.message}`,
      hint: 'is the host (VM) still running? `vm-pool ls` shows the VMs and their state',
    })
  }
}
