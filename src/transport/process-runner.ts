import { spawn } from 'node:child_process'
import type { Readable } from 'node:stream'
import { StringDecoder } from 'node:string_decoder'
import { VmPoolError } from '../errors.js'
import { scaleTimeout } from '../util/timeouts.js'
import type { ExecOptions, ExecResult } from './exec-types.js'
import { normalizeMaxOutputBytes, OutputCapture } from './output-capture.js'

/** Exit code reported for a command killed by `timeoutMs`, as coreutils `timeout` does. */
export const TIMED_OUT_EXIT_CODE = 124
/**
 * After a timeout or an abort killed the process group, how long its stdout/stderr may take to close
 * before we stop waiting for them. A child that left the group (`setsid`, a daemon) can hold them open
 * for ever; the SSH transport has the same rule (EXEC_KILL_GRACE_MS). Scaled by VM_POOL_TIMEOUT_SCALE.
 */
export const PROCESS_KILL_GRACE_MS = 2_000

export interface RunProcessOptions extends Omit<ExecOptions, 'cwd' | 'env'> {
  cwd?: string
  /** The complete environment of the child. */
  env?: NodeJS.ProcessEnv
  /** For error messages. */
  provider?: string
  vm?: string
  /** Streamed to stdin instead of `input` (a directory's tar): read as the child reads, with backpressure. */
  stdin?: Readable
  /**
   * Every stdout chunk as raw bytes (stdout is then NOT kept in the result); a returned promise pauses
   * the pipe until it settles, and a rejection ends the run with that error after the child is gone.
   */
  onStdoutData?: (chunk: Buffer) => void | Promise<void>
}

/**
 * Run a local program and collect an `ExecResult`. The child gets its own process group so a
 * timeout or an abort kills everything it started (a `sh -c` line forks), not just the shell; what
 * escaped the group gets PROCESS_KILL_GRACE_MS to let go of the pipes, then we stop waiting.
 * A program that cannot start rejects with `VMPOOL_EXEC_FAILED`; a non-zero exit does not reject.
 */
export function runProcess(file: string, args: readonly string[], options: RunProcessOptions = {}): Promise<ExecResult> {
  const started = performance.now()
  return new Promise((resolve, reject) => {
    if (options.signal?.aborted) {
      reject(abortedError(options))
      return
    }
    const child = spawn(file, args, {
      cwd: options.cwd,
      env: options.env,
      detached: true,
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    const maxBytes = normalizeMaxOutputBytes(options.maxOutputBytes)
    let consumerError: unknown
    const consumed = options.onStdoutData
      ? consume(child.stdout, options.onStdoutData, (error) => {
          consumerError ??= error
          killGroup()
        })
      : undefined
    const stdout = consumed ? () => ({ text: '', dropped: 0 }) : collect(child.stdout, maxBytes, 'stdout', options.onStdout)
    const stderr = collect(child.stderr, maxBytes, 'stderr', options.onStderr)
    let timedOut = false
    let aborted = false
    let settled = false
    let timer: NodeJS.Timeout | undefined
    let graceTimer: NodeJS.Timeout | undefined

    const settle = (): boolean => {
      if (settled) return false
      settled = true
      clearTimeout(timer)
      clearTimeout(graceTimer)
      options.signal?.removeEventListener('abort', onAbort)
      return true
    }
    const finish = async (code: number | null, signal: NodeJS.Signals | null) => {
      if (!settle()) return
      // The last stdout chunk may still be with onStdoutData (on its way to disk).
      await consumed?.idle()
      // After the grace the pipes may still be open: drop them so nothing keeps this process busy.
      child.stdout.destroy()
      child.stderr.destroy()
      options.stdin?.unpipe(child.stdin)
      if (aborted) {
        reject(abortedError(options))
        return
      }
      if (consumerError !== undefined) {
        reject(consumerError)
        return
      }
      const out = stdout()
      const err = stderr()
      const result: ExecResult = {
        exitCode: timedOut ? TIMED_OUT_EXIT_CODE : (code ?? 128 + signalNumber(signal)),
        stdout: out.text,
        stderr: err.text,
        durationMs: Math.round(performance.now() - started),
        timedOut,
      }
      if (out.dropped > 0) result.stdoutDroppedBytes = out.dropped
      if (err.dropped > 0) result.stderrDroppedBytes = err.dropped
      if (signal) result.signal = signal
      resolve(result)
    }
    const killGroup = () => {
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL')
      } catch {
        // the group is already gone
      }
      graceTimer ??= setTimeout(() => void finish(child.exitCode, child.signalCode), scaleTimeout(PROCESS_KILL_GRACE_MS))
    }
    const onAbort = () => {
      aborted = true
      killGroup()
    }
    options.signal?.addEventListener('abort', onAbort, { once: true })
    if (options.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        timedOut = true
        killGroup()
      }, options.timeoutMs)
    }

    // EPIPE on stdin is expected when the command exits without reading its input.
    child.stdin.on('error', () => {})
    if (options.stdin) {
      options.stdin.once('error', (error) => {
        consumerError ??= error
        killGroup()
      })
      options.stdin.pipe(child.stdin)
    } else if (options.input !== undefined) child.stdin.end(options.input)
    else child.stdin.end()

    child.once('error', (error) => {
      if (!settle()) return
      reject(
        new VmPoolError({
          code: 'VMPOOL_EXEC_FAILED',
          provider: options.provider,
          vm: options.vm,
          operation: 'exec',
          message: `could not run ${file}: ${error.message}`,
          cause: error,
        }),
      )
    })
    child.once('close', (code, signal) => void finish(code, signal))
  })
}

interface Collected {
  text: string
  dropped: number
}

/** Keeps a bounded head and tail (OutputCapture); `onChunk` sees all of it, decoded. */
function collect(stream: Readable, maxBytes: number, name: 'stdout' | 'stderr', onChunk?: (chunk: string) => void): () => Collected {
  const decoder = new StringDecoder('utf8')
  const capture = new OutputCapture(maxBytes)
  stream.on('data', (data: Buffer) => {
    capture.push(data)
    if (!onChunk) return
    const text = decoder.write(data)
    if (text !== '') onChunk(text)
  })
  return () => {
    const rest = onChunk ? decoder.end() : ''
    if (rest) onChunk?.(rest)
    return { text: capture.text(name), dropped: capture.droppedBytes }
  }
}

/** Hands raw chunks to `onData`, pausing the pipe while a returned promise is pending; `idle()` waits for the last one. */
function consume(stream: Readable, onData: (chunk: Buffer) => void | Promise<void>, onError: (error: unknown) => void): { idle(): Promise<void> } {
  let failed = false
  let pending: Promise<void> = Promise.resolve()
  stream.on('data', (data: Buffer) => {
    if (failed) return
    let result: void | Promise<void>
    try {
      result = onData(data)
    } catch (error) {
      failed = true
      return onError(error)
    }
    if (!result) return
    stream.pause()
    pending = result.then(
      () => void stream.resume(),
      (error: unknown) => {
        failed = true
        stream.resume()
        onError(error)
      },
    )
  })
  return { idle: () => pending }
}

function signalNumber(signal: NodeJS.Signals | null): number {
  const numbers: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 }
  return (signal && numbers[signal]) ?? 0
}

export function abortedError(options: { signal?: AbortSignal; provider?: string; vm?: string }): VmPoolError {
  return new VmPoolError({
    code: 'VMPOOL_EXEC_ABORTED',
    provider: options.provider,
    vm: options.vm,
    operation: 'exec',
    message: 'exec was aborted and the command was killed',
    cause: options.signal?.reason,
  })
}
