import type { Duplex, Readable } from 'node:stream'
import type { ClientChannel } from 'ssh2'
import { z } from 'zod'
import { formatZodError } from '../config/zod-error.js'
import { VmPoolError, invalidOptions } from '../errors.js'
import { createDebug } from '../util/debug.js'
import { scaleTimeout } from '../util/timeouts.js'
import type { ExecBufferResult, ExecOptions, ExecResult } from './exec-types.js'
import { createDirectorySink, directoryFailed, guestExtractArgv, guestPackArgv } from './guest-directory.js'
import { normalizeMaxOutputBytes } from './output-capture.js'
import { startLocalForward, type ForwardPortOptions, type PortForward } from './port-forward.js'
import { abortedError, TIMED_OUT_EXIT_CODE } from './process-runner.js'
import { collectChannel, EXEC_KILL_GRACE_MS, releaseAfterKill, type ChannelIo } from './ssh-channel-run.js'
import { SSH_READY_TIMEOUT_MS, sshEndpointFields } from './ssh-connection.js'
import { SshConnectionPool, type AcquireOptions, type ChannelSlot } from './ssh-connection-pool.js'
import { buildSshExecScript, remoteKillCommand, signalNumber, type KillTarget } from './ssh-exec-protocol.js'
import { loadSsh2, normalizeHostKeyPin } from './ssh-keys.js'
import { packDirectory } from './tar/tar-writer.js'

export type { ExecBufferResult } from './exec-types.js'
export { SSH_KEEPALIVE_INTERVAL_MS, SSH_READY_TIMEOUT_MS } from './ssh-connection.js'
export { EXEC_KILL_GRACE_MS }

/**
 * Concurrent exec channels per connection. OpenSSH's default `MaxSessions` is 10; two stay free for
 * whatever else uses that host.
 */
export const DEFAULT_MAX_CHANNELS = 8
/** Connections per transport: with DEFAULT_MAX_CHANNELS, 32 commands at once before execs wait. */
export const DEFAULT_MAX_CONNECTIONS = 4
/**
 * Handshakes in flight at once per transport. Dropbear drops a sixth unauthenticated connection from
 * one address (MAX_UNAUTH_PER_IP 5), OpenSSH starts dropping at 10 (MaxStartups).
 */
export const MAX_CONNECTING = 4

const debug = createDebug('vm-pool:ssh')
const execDebug = createDebug('vm-pool:exec')

export const sshTransportOptionsSchema = z
  .object({
    ...sshEndpointFields,
    username: z.string().min(1),
    /** @default SSH_READY_TIMEOUT_MS scaled by VM_POOL_TIMEOUT_SCALE */
    readyTimeoutMs: z.number().int().positive().optional(),
    /** Exec channels per connection (the server's MaxSessions, or less). @default DEFAULT_MAX_CHANNELS */
    maxChannels: z.number().int().min(1).max(64).default(DEFAULT_MAX_CHANNELS),
    /** Connections opened when every channel is busy; execs beyond that wait. @default DEFAULT_MAX_CONNECTIONS */
    maxConnections: z.number().int().min(1).max(64).default(DEFAULT_MAX_CONNECTIONS),
    /** Cipher preference, most wanted first (ssh2 names). @default ssh2's order (AES-GCM first where the CPU has AES) */
    ciphers: z.array(z.string().min(1)).min(1).optional(),
    /**
     * Reach the host through a stream this returns (e.g. a direct-tcpip channel of a connection to a
     * jump host) instead of a TCP connection to `host:port`; called once per connection.
     */
    tunnel: z.custom<() => Promise<Duplex>>((value) => typeof value === 'function').optional(),
    /** For error messages: `[vm-pool] [<provider>]`. @default 'ssh' */
    provider: z.string().min(1).default('ssh'),
    /** For error messages. */
    vm: z.string().min(1).optional(),
  })
  .strict()

export type SshTransportOptions = z.input<typeof sshTransportOptionsSchema>

type RunResult = ExecBufferResult & { stdoutText: string }
type StopReason = 'timeout' | 'abort'

/** `timeoutMs` ran out while the exec waited for a channel: it never started. */
class QueueTimeout extends Error {}

/**
 * Commands over ssh2 to one host: a small pool of persistent connections (ssh-connection-pool.ts),
 * each carrying up to `maxChannels` commands as multiplexed channels; more connections are opened on
 * demand up to `maxConnections`, then execs wait (DEBUG `vm-pool:exec` says so). Commands with a
 * timeout or an AbortSignal are killed through the protocol in ssh-exec-protocol.ts; a channel that
 * stays open after the kill (a child that left the process group) is closed after EXEC_KILL_GRACE_MS.
 * Files and directories travel as raw bytes on an exec's stdin/stdout (no base64, no sftp server).
 */
export class SshTransport {
  readonly #pool: SshConnectionPool
  readonly #context: { provider: string; vm: string | undefined }
  readonly #target: string

  constructor(options: SshTransportOptions) {
    const parsed = sshTransportOptionsSchema.safeParse(options)
    if (!parsed.success) {
      // Never echo the input: it holds the private key.
      throw invalidOptions(`invalid ssh transport options: ${formatZodError(parsed.error, options)}`, { provider: options?.provider ?? 'ssh', vm: options?.vm })
    }
    const { hostKey, maxChannels, maxConnections, readyTimeoutMs, ciphers, ...rest } = parsed.data
    if (loadSsh2().utils.parseKey(rest.privateKey) instanceof Error) {
      throw invalidOptions('the ssh private key could not be parsed (expected an unencrypted OpenSSH or PEM key)', { provider: rest.provider, vm: rest.vm })
    }
    this.#pool = new SshConnectionPool(
      {
        ...rest,
        readyTimeoutMs: readyTimeoutMs ?? scaleTimeout(SSH_READY_TIMEOUT_MS),
        hostKeyFingerprint: hostKey === undefined ? undefined : normalizeHostKeyPin(hostKey),
        ciphers,
      },
      { maxChannels, maxConnections, maxConnecting: MAX_CONNECTING },
    )
    this.#context = { provider: rest.provider, vm: rest.vm }
    this.#target = `${rest.username}@${rest.host}:${rest.port}`
  }

  /** `user@host:port`, for messages. */
  get target(): string {
    return this.#target
  }

  /** Connections open or opening now (they are kept when idle). */
  get connectionCount(): number {
    return this.#pool.size
  }

  /** The handshake time for connections opened from now on (after a boot's shorter per-attempt timeout). */
  setReadyTimeout(readyTimeoutMs: number): void {
    this.#pool.setReadyTimeout(readyTimeoutMs)
  }

  /** Open a connection now (exec does it lazily); rejects with the connect error. */
  async connect(): Promise<void> {
    await this.#pool.anyConnection()
  }

  async exec(command: string | readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
    const { stdoutText, stdout: _bytes, ...result } = await this.#run(command, options, { keepBytes: false })
    return { ...result, stdout: stdoutText }
  }

  /** Like `exec`, with stdout as raw bytes (`onStdout` still receives decoded text). */
  async execBuffer(command: string | readonly string[], options: ExecOptions = {}): Promise<ExecBufferResult> {
    const { stdoutText: _ignored, ...result } = await this.#run(command, options, { keepBytes: true })
    return result
  }

  /** Write a file on the host: the bytes go to `cat` on the other end as they are. Relative paths are under the home directory. */
  async putFile(path: string, data: string | Buffer): Promise<void> {
    const result = await this.exec(['sh', '-c', 'cat > "$1"', 'sh', path], { input: data })
    if (result.exitCode !== 0) throw this.#fileError('putFile', path, result.stderr)
  }

  /** Read a file from the host, whole, whatever its size (no `maxOutputBytes`). */
  async getFile(path: string): Promise<Buffer> {
    const result = await this.execBuffer(['cat', '--', path], { maxOutputBytes: Number.POSITIVE_INFINITY })
    if (result.exitCode !== 0) throw this.#fileError('getFile', path, result.stderr)
    return result.stdout
  }

  /** Copy `localDir` (modes, symlinks, empty directories) into `guestDir` on the host, made if missing. */
  async putDirectory(localDir: string, guestDir: string): Promise<void> {
    const result = await this.#runWithStdin(guestExtractArgv(guestDir), packDirectory(localDir))
    if (result.exitCode !== 0) throw directoryFailed('putDirectory', guestDir, result, this.#namedContext())
  }

  /** Copy `guestDir` on the host into `localDir` here; entries that would land outside `localDir` are refused (VMPOOL_UNSAFE_PATH). */
  async getDirectory(guestDir: string, localDir: string): Promise<void> {
    const sink = createDirectorySink(localDir, guestDir, this.#namedContext())
    let result: ExecResult
    try {
      const { stdoutText: _text, stdout: _bytes, ...rest } = await this.#run(guestPackArgv(guestDir), {}, { keepBytes: false, onStdoutData: (chunk) => sink.write(chunk) })
      result = { ...rest, stdout: '' }
    } catch (error) {
      await sink.abort()
      throw error
    }
    await sink.finish(result)
  }

  /** Run `command` with `stdin` streamed to it (with backpressure); stdout is bounded as for exec. */
  async #runWithStdin(command: string[], stdin: Readable): Promise<ExecResult> {
    const { stdoutText, stdout: _bytes, ...result } = await this.#run(command, {}, { keepBytes: false, stdin })
    return { ...result, stdout: stdoutText }
  }

  /**
   * A port on 127.0.0.1 here that reaches `guestPort` on the host's loopback, through a direct-tcpip
   * channel per connection (servers bound to 127.0.0.1 on the host are reachable too). The caller closes it.
   */
  async forwardPort(guestPort: number, options: ForwardPortOptions = {}): Promise<PortForward> {
    return startLocalForward({
      ...options,
      guestPort,
      provider: this.#context.provider,
      vm: this.#context.vm ?? this.#target,
      connect: async () => (await this.#pool.anyConnection()).openTcp('127.0.0.1', guestPort),
    })
  }

  /** A direct-tcpip channel to `host:port` as the host sees it (reconnects once like exec). */
  async openTcp(host: string, port: number): Promise<ClientChannel> {
    return (await this.#pool.anyConnection()).openTcp(host, port)
  }

  /** A channel to the unix socket `path` on the host (OpenSSH streamlocal forwarding). */
  async openUnix(path: string): Promise<ClientChannel> {
    return (await this.#pool.anyConnection()).openUnix(path)
  }

  /** Close the connections. The transport can still be used afterwards: the next exec reconnects. */
  async close(): Promise<void> {
    await this.#pool.close()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }

  #namedContext(): { provider: string; vm: string } {
    return { provider: this.#context.provider, vm: this.#context.vm ?? this.#target }
  }

  #fileError(operation: string, path: string, stderr: string): VmPoolError {
    return new VmPoolError({ code: 'VMPOOL_EXEC_FAILED', ...this.#context, operation, message: `${operation} ${JSON.stringify(path)} failed: ${stderr.trim() || 'no error output'}` })
  }

  /** Kill the remote command's process group (`KillTarget`), over a channel of its own that never waits for a slot. */
  async #killRemote(target: KillTarget): Promise<void> {
    const { slot, channel } = await this.#pool.openChannel({ urgent: true, onTimeout: () => new Error('unreachable'), onAborted: () => new Error('unreachable') }, (connection) => connection.openChannel(remoteKillCommand(target)))
    try {
      await new Promise<void>((resolve) => {
        channel.on('data', () => {})
        channel.stderr.on('data', () => {})
        channel.once('close', () => resolve())
        channel.end()
      })
    } finally {
      slot.release()
    }
  }

  /** A slot and the command's channel on it; `onOpen` as for SshConnection.openChannel. */
  async #open(options: ExecOptions, deadline: number | undefined, command: string | readonly string[], script: string, onOpen: (channel: ClientChannel) => void): Promise<{ slot: ChannelSlot; channel: ClientChannel }> {
    const context = { ...this.#context, signal: options.signal }
    const acquire: AcquireOptions = {
      signal: options.signal,
      deadline,
      onWait: (busy) => {
        const line = typeof command === 'string' ? command : command.join(' ')
        debug('%s: an exec waits for a channel (%s)', this.#target, busy)
        execDebug('%s: waits for a free channel (%s): %s', this.#context.vm ?? this.#target, busy, line.length > 120 ? `${line.slice(0, 120)}…` : line)
      },
      onTimeout: () => new QueueTimeout(),
      onAborted: () => abortedError(context),
    }
    return this.#pool.openChannel(acquire, (connection) => connection.openChannel(script, onOpen))
  }

  async #run(command: string | readonly string[], options: ExecOptions, io: ChannelIo): Promise<RunResult> {
    const started = performance.now()
    const context = { ...this.#context, signal: options.signal }
    if (options.signal?.aborted) throw abortedError(context)
    const maxOutputBytes = normalizeMaxOutputBytes(options.maxOutputBytes)
    const killable = options.timeoutMs !== undefined || options.signal !== undefined
    const script = buildSshExecScript(command, options, killable, this.#pool.limits.maxChannels === 1)
    const deadline = options.timeoutMs === undefined ? undefined : started + options.timeoutMs

    let exit: { code: number | null; signal: string | undefined } | undefined
    let opened: { slot: ChannelSlot; channel: ClientChannel }
    try {
      opened = await this.#open(options, deadline, command, script, (channel) => {
        channel.on('exit', (code: number | null, signal?: string) => {
          exit = { code, signal: signal ? `SIG${signal.replace(/^SIG/, '')}` : undefined }
        })
      })
    } catch (error) {
      if (!(error instanceof QueueTimeout)) throw error
      return { exitCode: TIMED_OUT_EXIT_CODE, stdout: Buffer.alloc(0), stdoutText: '', stderr: '', durationMs: Math.round(performance.now() - started), timedOut: true }
    }
    const { slot, channel } = opened
    let stopReason: StopReason | undefined
    let onStop: (() => void) | undefined
    const stop = (reason: StopReason) => {
      stopReason ??= reason
      onStop?.()
    }
    const onAbort = () => stop('abort')
    options.signal?.addEventListener('abort', onAbort, { once: true })
    const timer = deadline === undefined ? undefined : setTimeout(() => stop('timeout'), Math.max(0, deadline - performance.now()))
    // Aborted while its channel opened: the kill runs as soon as the pid line is in.
    if (options.signal?.aborted) stop('abort')
    let killDone: Promise<void> | undefined
    try {
      const finished = await collectChannel(channel, {
        options,
        io,
        maxOutputBytes,
        killable,
        killRemote: (target) => this.#killRemote(target).catch((error: unknown) => debug('kill on %s failed: %s', this.#target, (error as Error).message)),
        armKill: (kill) => {
          onStop = kill
          if (stopReason) kill()
        },
        target: this.#target,
        reason: () => stopReason,
      })
      killDone = finished.killDone
      if (finished.ioError !== undefined) throw finished.ioError
      if (finished.reportedExit !== undefined && !exit) exit = { code: finished.reportedExit, signal: undefined }
      if (stopReason === 'abort') throw abortedError(context)
      const timedOut = stopReason === 'timeout'
      if (!exit && !timedOut) {
        throw new VmPoolError({
          code: 'VMPOOL_EXEC_FAILED',
          ...this.#context,
          operation: 'exec',
          message: `the connection to ${this.#target} closed before the command finished`,
          hint: 'the VM may have stopped or been deleted',
          details: { stdoutBytes: finished.stdout.totalBytes, stderr: finished.stderr.text('stderr').slice(-200) },
        })
      }
      const result: RunResult = {
        exitCode: timedOut ? TIMED_OUT_EXIT_CODE : (exit?.code ?? 128 + signalNumber(exit?.signal)),
        stdout: io.keepBytes ? finished.stdout.bytes() : Buffer.alloc(0),
        stdoutText: io.keepBytes || io.onStdoutData ? '' : finished.stdout.text('stdout'),
        stderr: finished.stderr.text('stderr'),
        durationMs: Math.round(performance.now() - started),
        timedOut,
      }
      if (finished.stdout.droppedBytes > 0) result.stdoutDroppedBytes = finished.stdout.droppedBytes
      if (finished.stderr.droppedBytes > 0) result.stderrDroppedBytes = finished.stderr.droppedBytes
      if (exit?.signal && !timedOut) result.signal = exit.signal
      return result
    } finally {
      clearTimeout(timer)
      options.signal?.removeEventListener('abort', onAbort)
      // A kill still running (its command ended on its own meanwhile) must not meet the next command there.
      if (killDone) void releaseAfterKill(slot, killDone, this.#pool.limits.maxChannels === 1)
      else slot.release()
    }
  }
}

