import { StringDecoder } from 'node:string_decoder'
import ssh2 from 'ssh2'
import type { ClientChannel } from 'ssh2'
import { z } from 'zod'
import { formatZodError } from '../config/zod-error.js'
import { VmPoolError, invalidOptions } from '../errors.js'
import { createDebug } from '../util/debug.js'
import { scaleTimeout } from '../util/timeouts.js'
import type { ExecBufferResult, ExecOptions, ExecResult } from './exec-types.js'
import { abortedError, TIMED_OUT_EXIT_CODE } from './process-runner.js'
import { quoteShellArg } from './shell.js'
import { SSH_READY_TIMEOUT_MS, SshConnection, sshEndpointFields } from './ssh-connection.js'
import { buildSshExecScript, remoteKillCommand, signalNumber, SshStderrParser } from './ssh-exec-protocol.js'
import { normalizeHostKeyPin } from './ssh-keys.js'

export type { ExecBufferResult } from './exec-types.js'
export { SSH_KEEPALIVE_INTERVAL_MS, SSH_READY_TIMEOUT_MS } from './ssh-connection.js'

/** After killing a timed-out or aborted command, how long its channel may take to close before we close it. */
export const EXEC_KILL_GRACE_MS = 5_000
/**
 * Concurrent exec channels per connection. OpenSSH's default `MaxSessions` is 10; two stay free for
 * the kill commands that timeouts and aborts send over the same connection.
 */
export const DEFAULT_MAX_CHANNELS = 8

const debug = createDebug('vm-pool:ssh')

export const sshTransportOptionsSchema = z
  .object({
    ...sshEndpointFields,
    username: z.string().min(1),
    /** @default SSH_READY_TIMEOUT_MS scaled by VM_POOL_TIMEOUT_SCALE */
    readyTimeoutMs: z.number().int().positive().optional(),
    /** @default DEFAULT_MAX_CHANNELS */
    maxChannels: z.number().int().min(1).max(64).default(DEFAULT_MAX_CHANNELS),
    /** For error messages: `[vm-pool] [<provider>]`. @default 'ssh' */
    provider: z.string().min(1).default('ssh'),
    /** For error messages. */
    vm: z.string().min(1).optional(),
  })
  .strict()

export type SshTransportOptions = z.input<typeof sshTransportOptionsSchema>

type RunResult = ExecBufferResult & { stdoutText: string }
type StopReason = 'timeout' | 'abort'

/**
 * Commands over one persistent ssh2 connection to one host (`SshConnection`, opened on first use),
 * shared by every exec as multiplexed channels, at most `maxChannels` at once. Commands with a
 * timeout or an AbortSignal are killed through the protocol in ssh-exec-protocol.ts; a channel
 * that stays open after the kill (a child that left the process group) is closed after
 * EXEC_KILL_GRACE_MS.
 */
export class SshTransport {
  readonly #connection: SshConnection
  readonly #maxChannels: number
  readonly #context: { provider: string; vm: string | undefined }
  #activeChannels = 0
  readonly #slotWaiters: Array<() => void> = []

  constructor(options: SshTransportOptions) {
    const parsed = sshTransportOptionsSchema.safeParse(options)
    if (!parsed.success) {
      // Never echo the input: it holds the private key.
      throw invalidOptions(`invalid ssh transport options: ${formatZodError(parsed.error, options)}`, { provider: options?.provider ?? 'ssh', vm: options?.vm })
    }
    const { hostKey, maxChannels, readyTimeoutMs, ...rest } = parsed.data
    if (ssh2.utils.parseKey(rest.privateKey) instanceof Error) {
      throw invalidOptions('the ssh private key could not be parsed (expected an unencrypted OpenSSH or PEM key)', { provider: rest.provider, vm: rest.vm })
    }
    this.#connection = new SshConnection({
      ...rest,
      readyTimeoutMs: readyTimeoutMs ?? scaleTimeout(SSH_READY_TIMEOUT_MS),
      hostKeyFingerprint: hostKey === undefined ? undefined : normalizeHostKeyPin(hostKey),
    })
    this.#maxChannels = maxChannels
    this.#context = { provider: rest.provider, vm: rest.vm }
  }

  /** `user@host:port`, for messages. */
  get target(): string {
    return this.#connection.target
  }

  /** Open the connection now (exec does it lazily); rejects with the connect error. */
  async connect(): Promise<void> {
    await this.#connection.getClient()
  }

  async exec(command: string | readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
    const { stdoutText, ...result } = await this.#run(command, options, false)
    return { ...result, stdout: stdoutText }
  }

  /** Like `exec`, with stdout as raw bytes (`onStdout` still receives decoded text). */
  async execBuffer(command: string | readonly string[], options: ExecOptions = {}): Promise<ExecBufferResult> {
    const { stdoutText: _ignored, ...result } = await this.#run(command, options, true)
    return result
  }

  /** Write a file on the host (binary-safe, over exec: no sftp server needed). Relative paths are under the home directory. */
  async putFile(path: string, data: string | Buffer): Promise<void> {
    const result = await this.exec(`cat > ${quoteShellArg(path)}`, { input: data })
    if (result.exitCode !== 0) throw this.#fileError('putFile', path, result.stderr)
  }

  /** Read a file from the host (binary-safe). */
  async getFile(path: string): Promise<Buffer> {
    const result = await this.execBuffer(['cat', '--', path])
    if (result.exitCode !== 0) throw this.#fileError('getFile', path, result.stderr)
    return result.stdout
  }

  /** Close the connection. The transport can still be used afterwards: the next exec reconnects. */
  async close(): Promise<void> {
    await this.#connection.close()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }

  #fileError(operation: string, path: string, stderr: string): VmPoolError {
    return new VmPoolError({ code: 'VMPOOL_EXEC_FAILED', ...this.#context, operation, message: `${operation} ${JSON.stringify(path)} failed: ${stderr.trim() || 'no error output'}` })
  }

  /** Wait for a free channel; an abort while waiting rejects at once, before the command could start. */
  async #acquireSlot(signal: AbortSignal | undefined, onAborted: () => Error): Promise<void> {
    while (this.#activeChannels >= this.#maxChannels) {
      if (signal?.aborted) throw onAborted()
      await new Promise<void>((resolve, reject) => {
        const wake = () => {
          signal?.removeEventListener('abort', onAbort)
          resolve()
        }
        const onAbort = () => {
          const index = this.#slotWaiters.indexOf(wake)
          if (index >= 0) this.#slotWaiters.splice(index, 1)
          reject(onAborted())
        }
        signal?.addEventListener('abort', onAbort, { once: true })
        this.#slotWaiters.push(wake)
      })
    }
    if (signal?.aborted) throw onAborted()
    this.#activeChannels++
  }

  #releaseSlot(): void {
    this.#activeChannels--
    this.#slotWaiters.shift()?.()
  }

  /** Kill the remote process group led by `pid`, over a channel of its own (outside the slot count). */
  async #killRemote(pid: number): Promise<void> {
    const channel = await this.#connection.openChannel(remoteKillCommand(pid))
    await new Promise<void>((resolve) => {
      channel.on('data', () => {})
      channel.stderr.on('data', () => {})
      channel.once('close', () => resolve())
      channel.end()
    })
  }

  async #run(command: string | readonly string[], options: ExecOptions, keepBytes: boolean): Promise<RunResult> {
    const context = { ...this.#context, signal: options.signal }
    if (options.signal?.aborted) throw abortedError(context)
    const killable = options.timeoutMs !== undefined || options.signal !== undefined
    const script = buildSshExecScript(command, options, killable)

    await this.#acquireSlot(options.signal, () => abortedError(context))
    let stopReason: StopReason | undefined
    let onStop: (() => void) | undefined
    const stop = (reason: StopReason) => {
      stopReason ??= reason
      onStop?.()
    }
    const onAbort = () => stop('abort')
    options.signal?.addEventListener('abort', onAbort, { once: true })
    const timer = options.timeoutMs === undefined ? undefined : setTimeout(() => stop('timeout'), options.timeoutMs)
    try {
      const started = performance.now()
      let exit: { code: number | null; signal: string | undefined } | undefined
      const channel = await this.#connection.openChannel(script, (opened) => {
        opened.on('exit', (code: number | null, signal?: string) => {
          exit = { code, signal: signal ? `SIG${signal.replace(/^SIG/, '')}` : undefined }
        })
      })
      const finished = await this.#collect(channel, options, keepBytes, killable, (kill) => {
        onStop = kill
        if (stopReason) kill()
      }, () => stopReason)
      if (finished.reportedExit !== undefined && !exit) exit = { code: finished.reportedExit, signal: undefined }
      if (stopReason === 'abort') throw abortedError(context)
      const timedOut = stopReason === 'timeout'
      if (!exit && !timedOut) {
        throw new VmPoolError({
          code: 'VMPOOL_EXEC_FAILED',
          ...this.#context,
          operation: 'exec',
          message: `the connection to ${this.target} closed before the command finished`,
          hint: 'the VM may have stopped or been deleted',
          details: { stdoutBytes: finished.stdout.length, stderr: finished.stderr.slice(-200) },
        })
      }
      const result: RunResult = {
        exitCode: timedOut ? TIMED_OUT_EXIT_CODE : (exit?.code ?? 128 + signalNumber(exit?.signal)),
        stdout: finished.stdout,
        stdoutText: finished.stdoutText,
        stderr: finished.stderr,
        durationMs: Math.round(performance.now() - started),
        timedOut,
      }
      if (exit?.signal && !timedOut) result.signal = exit.signal
      return result
    } finally {
      clearTimeout(timer)
      options.signal?.removeEventListener('abort', onAbort)
      this.#releaseSlot()
    }
  }

  /**
   * Stream one channel until it closes: stdout as bytes and text, stderr through the marker parser.
   * `armKill` receives the function that kills the remote command (called on timeout/abort): it
   * kills the process group, then closes the channel if it is still open after EXEC_KILL_GRACE_MS.
   */
  #collect(channel: ClientChannel, options: ExecOptions, keepBytes: boolean, killable: boolean, armKill: (kill: () => void) => void, reason: () => StopReason | undefined) {
    return new Promise<{ stdout: Buffer; stdoutText: string; stderr: string; reportedExit: number | undefined }>((resolve) => {
      const stdoutChunks: Buffer[] = []
      const stdoutDecoder = new StringDecoder('utf8')
      const stdoutText: string[] = []
      const stderrText: string[] = []
      let pidKnown: (pid: number | undefined) => void = () => {}
      const pid = new Promise<number | undefined>((resolvePid) => (pidKnown = resolvePid))
      const stderr = new SshStderrParser(killable, (value) => pidKnown(value), (text) => {
        stderrText.push(text)
        options.onStderr?.(text)
      })
      let closed = false
      let killing = false
      let graceTimer: NodeJS.Timeout | undefined
      const emitStdout = (text: string) => {
        if (text === '') return
        if (!keepBytes) stdoutText.push(text)
        options.onStdout?.(text)
      }

      channel.on('data', (data: Buffer) => {
        stdoutChunks.push(data)
        emitStdout(stdoutDecoder.write(data))
      })
      channel.stderr.on('data', (data: Buffer) => stderr.push(data))
      armKill(() => {
        if (killing || closed) return
        killing = true
        debug('%s on %s: killing the remote command', reason(), this.target)
        void (async () => {
          const known = await pid
          if (!closed && known !== undefined) {
            await this.#killRemote(known).catch((error: unknown) => debug('kill on %s failed: %s', this.target, (error as Error).message))
          }
          if (!closed) graceTimer = setTimeout(() => channel.close(), EXEC_KILL_GRACE_MS)
        })()
      })
      channel.once('close', () => {
        closed = true
        pidKnown(undefined)
        clearTimeout(graceTimer)
        const reportedExit = stderr.end()
        emitStdout(stdoutDecoder.end())
        resolve({ stdout: Buffer.concat(stdoutChunks), stdoutText: stdoutText.join(''), stderr: stderrText.join(''), reportedExit })
      })
      channel.on('error', (error: Error) => debug('channel error on %s: %s', this.target, error.message))
      if (options.input !== undefined) channel.end(options.input)
      else channel.end()
    })
  }
}
