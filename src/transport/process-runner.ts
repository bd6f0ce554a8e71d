import { spawn } from 'node:child_process'
import { StringDecoder } from 'node:string_decoder'
import { VmPoolError } from '../errors.js'
import { scaleTimeout } from '../util/timeouts.js'
import type { ExecOptions, ExecResult } from './exec-types.js'

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
    const stdout = collect(child.stdout, options.onStdout)
    const stderr = collect(child.stderr, options.onStderr)
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
    const finish = (code: number | null, signal: NodeJS.Signals | null) => {
      if (!settle()) return
      // After the grace the pipes may still be open: drop them so nothing keeps this process busy.
      child.stdout.destroy()
      child.stderr.destroy()
      if (aborted) {
        reject(abortedError(options))
        return
      }
      const result: ExecResult = {
        exitCode: timedOut ? TIMED_OUT_EXIT_CODE : (code ?? 128 + signalNumber(signal)),
        stdout: stdout(),
        stderr: stderr(),
        durationMs: Math.round(performance.now() - started),
        timedOut,
      }
      if (signal) result.signal = signal
      resolve(result)
    }
    const killGroup = () => {
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL')
      } catch {
        // the group is already gone
      }
      graceTimer ??= setTimeout(() => finish(child.exitCode, child.signalCode), scaleTimeout(PROCESS_KILL_GRACE_MS))
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
    if (options.input !== undefined) child.stdin.end(options.input)
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
    child.once('close', finish)
  })
}

function collect(stream: NodeJS.ReadableStream, onChunk?: (chunk: string) => void): () => string {
  const decoder = new StringDecoder('utf8')
  const parts: string[] = []
  stream.on('data', (data: Buffer) => {
    const text = decoder.write(data)
    if (text === '') return
    parts.push(text)
    onChunk?.(text)
  })
  return () => {
    const rest = decoder.end()
    if (rest) {
      parts.push(rest)
      onChunk?.(rest)
    }
    return parts.join('')
  }
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
