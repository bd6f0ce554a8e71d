import { StringDecoder } from 'node:string_decoder'
import ssh2 from 'ssh2'
import type { Client as SshClient, ClientChannel, ConnectConfig } from 'ssh2'
import { z } from 'zod'
import { formatZodError } from '../config/zod-error.js'
import { VmPoolError, VmPoolTimeoutError, invalidOptions } from '../errors.js'
import type { ExecBufferResult, ExecOptions, ExecResult } from './exec-types.js'

export type { ExecBufferResult } from './exec-types.js'
import { createDebug } from '../util/debug.js'
import { scaleTimeout } from '../util/timeouts.js'
import { abortedError, TIMED_OUT_EXIT_CODE } from './process-runner.js'
import { buildShellScript, quoteShellArg } from './shell.js'
import { getSshFingerprint, normalizeHostKeyPin } from './ssh-keys.js'

/** Time for TCP connect + SSH handshake + auth, before scaling by `VM_POOL_TIMEOUT_SCALE`. */
export const SSH_READY_TIMEOUT_MS = 20_000
/** After killing a timed-out or aborted command, how long its channel may take to close before we close it. */
export const EXEC_KILL_GRACE_MS = 5_000
/** SSH keepalive period: a dead peer is noticed after about three of these. */
export const SSH_KEEPALIVE_INTERVAL_MS = 10_000
/**
 * Concurrent exec channels per connection. OpenSSH's default `MaxSessions` is 10; two stay free for
 * the kill commands that timeouts and aborts send over the same connection.
 */
export const DEFAULT_MAX_CHANNELS = 8

const debug = createDebug('vm-pool:ssh')

export const sshTransportOptionsSchema = z
  .object({
    host: z.string().min(1),
    /** @default 22 */
    port: z.number().int().min(1).max(65_535).default(22),
    username: z.string().min(1),
    /** OpenSSH or PEM private key text. Never logged, never part of an error. */
    privateKey: z.union([z.string().min(1), z.instanceof(Buffer)]),
    /**
     * The pinned host key: an OpenSSH public key line (`ssh-ed25519 AAAA...`) or a `SHA256:...`
     * fingerprint. A server presenting another key is refused (`VMPOOL_HOST_KEY_MISMATCH`).
     * Without it any host key is accepted — only for hosts reached over a trusted path.
     */
    hostKey: z.string().min(1).optional(),
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


/** The first stderr line of every command: the remote shell's pid, so a timeout can kill its process group. */
const PID_MARKER = '\u001evm-pool-pid '
/** The last stderr line of every command: its exit status, in case the server does not send it. */
const EXIT_MARKER = '\u001evm-pool-exit '
const EXIT_MARKER_LINE = /^\u001evm-pool-exit (\d+)\n$/
/** Could `text` (stderr from a 0x1e byte to the end) still grow into the exit marker line? */
function isExitMarkerPrefix(text: string): boolean {
  return EXIT_MARKER.startsWith(text) || /^\u001evm-pool-exit \d*\n?$/.test(text)
}

/**
 * One persistent ssh2 connection to one host, opened on first use and shared by every exec as
 * multiplexed channels. If the connection dropped, the next exec reconnects (once per exec).
 *
 * Commands with a timeout or an AbortSignal run through a small `sh` preamble that reports the shell's pid and makes it a process
 * group leader (OpenSSH's sshd does that already, dropbear does not), because SSH channel signals
 * are ignored by dropbear and by OpenSSH before 7.9: a timeout or an abort kills the group with a
 * second exec on the same connection, which also ends background children holding the channel open.
 */
export class SshTransport {
  readonly #config: Omit<z.output<typeof sshTransportOptionsSchema>, 'hostKey'> & { readyTimeoutMs: number; hostKeyFingerprint: string | undefined }
  #connection: Promise<SshClient> | undefined
  /** The client behind #connection, also while its handshake runs. */
  #client: SshClient | undefined
  #activeChannels = 0
  readonly #slotWaiters: Array<() => void> = []

  constructor(options: SshTransportOptions) {
    const parsed = sshTransportOptionsSchema.safeParse(options)
    if (!parsed.success) {
      // Never echo the input: it holds the private key.
      throw invalidOptions(`invalid ssh transport options: ${formatZodError(parsed.error, options)}`, { provider: options?.provider ?? 'ssh', vm: options?.vm })
    }
    const { hostKey, ...rest } = parsed.data
    const parsedKey = ssh2.utils.parseKey(rest.privateKey)
    if (parsedKey instanceof Error) {
      throw invalidOptions('the ssh private key could not be parsed (expected an unencrypted OpenSSH or PEM key)', { provider: rest.provider, vm: rest.vm })
    }
    this.#config = Object.freeze({
      ...rest,
      readyTimeoutMs: rest.readyTimeoutMs ?? scaleTimeout(SSH_READY_TIMEOUT_MS),
      hostKeyFingerprint: hostKey === undefined ? undefined : normalizeHostKeyPin(hostKey),
    })
  }

  /** `user@host:port`, for messages. */
  get target(): string {
    return `${this.#config.username}@${this.#config.host}:${this.#config.port}`
  }

  /** Open the connection now (exec does it lazily); rejects with the connect error. */
  async connect(): Promise<void> {
    await this.#getClient()
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
    const client = this.#client
    this.#client = undefined
    this.#connection = undefined
    if (!client) return
    // Also ends a handshake still in progress (its pending connect rejects).
    await new Promise<void>((resolve) => {
      client.once('close', () => resolve())
      client.end()
      // A peer that vanished never sends its close: do not wait for it.
      setTimeout(resolve, 1_000).unref()
    })
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }

  #fileError(operation: string, path: string, stderr: string): VmPoolError {
    return new VmPoolError({
      code: 'VMPOOL_EXEC_FAILED',
      provider: this.#config.provider,
      vm: this.#config.vm,
      operation,
      message: `${operation} ${JSON.stringify(path)} failed: ${stderr.trim() || 'no error output'}`,
    })
  }

  #getClient(): Promise<SshClient> {
    if (!this.#connection) {
      const connection = this.#openConnection()
      this.#connection = connection
      connection.catch(() => {
        if (this.#connection === connection) this.#connection = undefined
      })
    }
    return this.#connection
  }

  #openConnection(): Promise<SshClient> {
    const config = this.#config
    const client = new ssh2.Client()
    this.#client = client
    let hostKeyProblem: { got: string } | undefined
    const connectConfig: ConnectConfig = {
      host: config.host,
      port: config.port,
      username: config.username,
      privateKey: config.privateKey,
      readyTimeout: config.readyTimeoutMs,
      keepaliveInterval: SSH_KEEPALIVE_INTERVAL_MS,
      keepaliveCountMax: 3,
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
        if (this.#client === client) {
          this.#client = undefined
          this.#connection = undefined
        }
      })
      debug('connecting to %s', this.target)
      client.connect(connectConfig)
    })
  }

  #connectError(error: Error & { level?: string }, hostKeyProblem: { got: string } | undefined): VmPoolError {
    const base = { provider: this.#config.provider, vm: this.#config.vm, operation: 'connect', cause: error }
    if (hostKeyProblem) {
      return new VmPoolError({
        ...base,
        code: 'VMPOOL_HOST_KEY_MISMATCH',
        message: `host key of ${this.#config.host}:${this.#config.port} is ${hostKeyProblem.got}, but ${this.#config.hostKeyFingerprint} is pinned: refusing to connect`,
        hint: 'if the host was rebuilt on purpose, update the pinned key (for qemu: recreate the VM after `vm-pool image build --force`); otherwise something else answers on that port',
        details: { expected: this.#config.hostKeyFingerprint, got: hostKeyProblem.got },
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
        message: `timed out after ${this.#config.readyTimeoutMs} ms waiting for the ssh handshake with ${this.target} (SSH_READY_TIMEOUT_MS)`,
        timeoutName: 'SSH_READY_TIMEOUT_MS',
        timeoutMs: this.#config.readyTimeoutMs,
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

  /** Wait for a free channel; an abort while waiting rejects at once, before the command could start. */
  async #acquireSlot(signal: AbortSignal | undefined, onAborted: () => Error): Promise<void> {
    while (this.#activeChannels >= this.#config.maxChannels) {
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

  /** Open an exec channel; if the connection turns out to be dead, reconnect once and retry (the command never started). */
  async #openChannel(script: string, onOpen?: (channel: ClientChannel) => void): Promise<ClientChannel> {
    for (let attempt = 0; ; attempt++) {
      const client = await this.#getClient()
      try {
        return await new Promise<ClientChannel>((resolve, reject) => {
          client.exec(script, (error, channel) => {
            if (error) return reject(error)
            // Synchronously: a fast command's exit-status can arrive in the same read as the exec
            // reply, and would be emitted before an `await` continuation could listen for it.
            onOpen?.(channel)
            resolve(channel)
          })
        })
      } catch (error) {
        if (attempt === 0) {
          debug('exec channel on %s failed (%s): reconnecting once', this.target, (error as Error).message)
          this.#connection = undefined
          if (this.#client === client) this.#client = undefined
          client.end()
          continue
        }
        throw new VmPoolError({
          code: 'VMPOOL_EXEC_FAILED',
          provider: this.#config.provider,
          vm: this.#config.vm,
          operation: 'exec',
          message: `could not start a command on ${this.target}: ${(error as Error).message}`,
          cause: error,
        })
      }
    }
  }

  /** Kill the process group led by `pid` (or just `pid` if it leads none), over a channel of its own. */
  async #killRemote(pid: number): Promise<void> {
    const channel = await this.#openChannel(`kill -9 -${pid} 2>/dev/null || kill -9 ${pid} 2>/dev/null; exit 0`)
    await new Promise<void>((resolve) => {
      channel.on('data', () => {})
      channel.stderr.on('data', () => {})
      channel.once('close', () => resolve())
      channel.end()
    })
  }

  async #run(command: string | readonly string[], options: ExecOptions, keepBytes: boolean): Promise<ExecBufferResult & { stdoutText: string }> {
    const context = { provider: this.#config.provider, vm: this.#config.vm, signal: options.signal }
    if (options.signal?.aborted) throw abortedError(context)
    // Dropbear sometimes closes a channel without its exit-status when several commands end at once:
    // the shell also reports its status as the last stderr line, which is stripped again below.
    const payload = `trap 'printf "${EXIT_MARKER.replace('\u001e', '\\036')}%s\\n" "$?" >&2' EXIT\n${buildShellScript(command, options)}`
    // The preamble costs two extra process starts (slow on an emulated guest): only commands that
    // may have to be killed get it.
    const killable = options.timeoutMs !== undefined || options.signal !== undefined
    const script = !killable ? payload : [
      `printf '${PID_MARKER.replace('\u001e', '\\036')}%s\\n' "$$" >&2`,
      'read -r _ _ _ _ vm_pool_pgid _ 2>/dev/null </proc/$$/stat || vm_pool_pgid=$$',
      `[ "$vm_pool_pgid" = "$$" ] || ! command -v setsid >/dev/null 2>&1 || exec setsid /bin/sh -c ${quoteShellArg(payload)}`,
      payload,
    ].join('\n')

    await this.#acquireSlot(options.signal, () => abortedError(context))
    try {
      const started = performance.now()
      let stopReason: 'timeout' | 'abort' | undefined
      let onStop: (() => void) | undefined
      const stop = (reason: 'timeout' | 'abort') => {
        stopReason ??= reason
        onStop?.()
      }
      const onAbort = () => stop('abort')
      options.signal?.addEventListener('abort', onAbort, { once: true })
      const timer = options.timeoutMs === undefined ? undefined : setTimeout(() => stop('timeout'), options.timeoutMs)
      try {
        let exit: { code: number | null; signal: string | undefined } | undefined
        const channel = await this.#openChannel(script, (opened) => {
          opened.on('exit', (code: number | null, signal?: string) => {
            exit = { code, signal: signal ? `SIG${signal.replace(/^SIG/, '')}` : undefined }
          })
        })
        return await new Promise((resolve, reject) => {
          const stdoutChunks: Buffer[] = []
          const stdoutDecoder = new StringDecoder('utf8')
          const stdoutText: string[] = []
          const stderrDecoder = new StringDecoder('utf8')
          const stderrText: string[] = []
          let stderrHead: Buffer | undefined = killable ? Buffer.alloc(0) : undefined
          let pid: number | undefined
          let pidKnown: (() => void) | undefined
          const pidPromise = new Promise<void>((resolvePid) => (pidKnown = resolvePid))
          let closed = false
          let killing = false
          let graceTimer: NodeJS.Timeout | undefined

          const emitStderr = (data: Buffer) => {
            const text = stderrDecoder.write(data)
            if (text === '') return
            stderrText.push(text)
            options.onStderr?.(text)
          }
          // Hold back anything that may be the start of the exit marker until more arrives or the channel closes.
          let stderrTail = Buffer.alloc(0)
          const pushStderr = (data: Buffer) => {
            const buffer = stderrTail.length > 0 ? Buffer.concat([stderrTail, data]) : data
            const at = buffer.lastIndexOf(0x1e)
            const candidate = at < 0 ? '' : buffer.subarray(at).toString('latin1')
            if (at >= 0 && isExitMarkerPrefix(candidate)) {
              if (at > 0) emitStderr(buffer.subarray(0, at))
              stderrTail = Buffer.from(buffer.subarray(at))
            } else {
              stderrTail = Buffer.alloc(0)
              emitStderr(buffer)
            }
          }
          channel.on('data', (data: Buffer) => {
            stdoutChunks.push(data)
            const text = stdoutDecoder.write(data)
            if (text === '') return
            if (!keepBytes) stdoutText.push(text)
            options.onStdout?.(text)
          })
          channel.stderr.on('data', (data: Buffer) => {
            if (stderrHead === undefined) return pushStderr(data)
            stderrHead = Buffer.concat([stderrHead, data])
            const newline = stderrHead.indexOf(0x0a)
            if (newline < 0 && stderrHead.length < 64) return
            const head = stderrHead
            stderrHead = undefined
            const line = newline < 0 ? '' : head.subarray(0, newline).toString('latin1')
            if (line.startsWith(PID_MARKER)) {
              pid = Number(line.slice(PID_MARKER.length))
              pidKnown?.()
              if (head.length > newline + 1) pushStderr(head.subarray(newline + 1))
            } else {
              pushStderr(head)
            }
          })

          const kill = async () => {
            if (killing || closed) return
            killing = true
            debug('%s on %s: killing the remote command', stopReason, this.target)
            await pidPromise
            if (!closed && pid !== undefined && Number.isInteger(pid) && pid > 0) {
              await this.#killRemote(pid).catch((error: unknown) => debug('kill on %s failed: %s', this.target, (error as Error).message))
            }
            if (!closed) graceTimer = setTimeout(() => channel.close(), EXEC_KILL_GRACE_MS)
          }
          onStop = () => void kill()
          if (stopReason) onStop()

          channel.once('close', () => {
            closed = true
            pidKnown?.()
            clearTimeout(graceTimer)
            if (stderrHead !== undefined && stderrHead.length > 0) pushStderr(stderrHead)
            const reported = EXIT_MARKER_LINE.exec(stderrTail.toString('latin1'))
            if (!reported && stderrTail.length > 0) emitStderr(stderrTail)
            if (!exit && reported) exit = { code: Number(reported[1]), signal: undefined }
            const restOut = stdoutDecoder.end()
            if (restOut) {
              if (!keepBytes) stdoutText.push(restOut)
              options.onStdout?.(restOut)
            }
            const restErr = stderrDecoder.end()
            if (restErr) {
              stderrText.push(restErr)
              options.onStderr?.(restErr)
            }
            if (stopReason === 'abort') return reject(abortedError(context))
            const timedOut = stopReason === 'timeout'
            if (!exit && !timedOut) {
              return reject(
                new VmPoolError({
                  code: 'VMPOOL_EXEC_FAILED',
                  ...context,
                  operation: 'exec',
                  message: `the connection to ${this.target} closed before the command finished`,
                  hint: 'the VM may have stopped or been deleted',
                  details: { stdoutBytes: stdoutChunks.reduce((sum, chunk) => sum + chunk.length, 0), stderr: stderrText.join('').slice(-200) },
                }),
              )
            }
            const result: ExecBufferResult & { stdoutText: string } = {
              exitCode: timedOut ? TIMED_OUT_EXIT_CODE : (exit?.code ?? 128 + signalNumber(exit?.signal)),
              stdout: Buffer.concat(stdoutChunks),
              stdoutText: stdoutText.join(''),
              stderr: stderrText.join(''),
              durationMs: Math.round(performance.now() - started),
              timedOut,
            }
            if (exit?.signal && !timedOut) result.signal = exit.signal
            resolve(result)
          })
          channel.on('error', (error: Error) => debug('channel error on %s: %s', this.target, error.message))
          if (options.input !== undefined) channel.end(options.input)
          else channel.end()
        })
      } finally {
        clearTimeout(timer)
        options.signal?.removeEventListener('abort', onAbort)
      }
    } finally {
      this.#releaseSlot()
    }
  }
}

function signalNumber(signal: string | undefined): number {
  const numbers: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 }
  return (signal && numbers[signal]) || 0
}
