import { VmPoolError, isVmPoolError } from '../errors.js'
import { abortedError, TIMED_OUT_EXIT_CODE } from './process-runner.js'
import { scaleTimeout, sleep, withTimeout, type WithTimeoutOptions } from '../util/timeouts.js'
import type { ExecOptions, ExecResult, Vm, VmRecord } from '../providers/vm-provider.js'
import { makeGuestExec } from './guest-exec-script.js'

/** How long after `timeoutMs` the local client is killed if the guest `timeout` did not end the command. */
export const EXEC_BACKSTOP_GRACE_MS = 15_000
/** Time allowed for the second connection that kills an aborted or overdue command. */
export const EXEC_KILL_TIMEOUT_MS = 30_000
const READY_POLL_INTERVAL_MS = 500
/** How long one readiness probe (`true` in the guest) may take before the next one. */
export const READY_PROBE_TIMEOUT_MS = 10_000

export interface GuestRunOptions {
  input?: string | Buffer | undefined
  timeoutMs?: number | undefined
  signal?: AbortSignal | undefined
  onStdout?: ((chunk: string) => void) | undefined
  onStderr?: ((chunk: string) => void) | undefined
}

export interface CliGuestVmOptions {
  record: VmRecord
  provider: string
  /** Run `argv` inside the guest through the manager's CLI (`multipass exec`, `orbctl run`). */
  runInGuest(argv: string[], options: GuestRunOptions): Promise<ExecResult>
  /** A VmPoolError when the result is the CLI's own failure (VM gone, daemon down), not the command's. */
  classifyFailure(result: ExecResult, operation: string): VmPoolError | undefined
}

/**
 * A `Vm` whose commands go through a VM manager's CLI. The command is wrapped by `makeGuestExec` so
 * timeouts and aborts kill it inside the guest (killing the local CLI client alone would leave it
 * running there), and file transfer goes through `cat` / `base64` so it works wherever exec works.
 */
export function createCliGuestVm(options: CliGuestVmOptions): Vm {
  const { record, provider } = options
  const vmName = record.name

  const exec = async (command: string | string[], execOptions: ExecOptions = {}): Promise<ExecResult> => {
    if (execOptions.signal?.aborted) throw abortedError({ signal: execOptions.signal, provider, vm: vmName })
    const { timeoutMs } = execOptions
    const { script, killScript } = makeGuestExec(command, { cwd: execOptions.cwd, env: execOptions.env, guestTimeoutMs: timeoutMs })
    let killing: Promise<unknown> | undefined
    const killInGuest = () => (killing ??= options.runInGuest(['sh', '-c', killScript], { timeoutMs: scaleTimeout(EXEC_KILL_TIMEOUT_MS) }).catch(() => undefined))
    const onAbort = () => void killInGuest()
    execOptions.signal?.addEventListener('abort', onAbort, { once: true })
    let result: ExecResult
    try {
      result = await options.runInGuest(['sh', '-c', script], {
        input: execOptions.input,
        timeoutMs: timeoutMs === undefined ? undefined : timeoutMs + scaleTimeout(EXEC_BACKSTOP_GRACE_MS),
        signal: execOptions.signal,
        onStdout: execOptions.onStdout,
        onStderr: execOptions.onStderr,
      })
    } catch (error) {
      // Aborted: the local client is gone; make sure the command inside the guest is too before rejecting.
      if (killing) await killing
      throw error
    } finally {
      execOptions.signal?.removeEventListener('abort', onAbort)
    }
    if (result.timedOut) {
      // The backstop fired: the guest never answered after the timeout. Kill there too.
      await killInGuest()
      return { ...result, exitCode: TIMED_OUT_EXIT_CODE, timedOut: true }
    }
    const failure = options.classifyFailure(result, 'exec')
    if (failure) throw failure
    // GNU timeout exits 124 (137 after its -k SIGKILL); a command that exits 124 by itself before the
    // limit is not a timeout, hence the elapsed-time check.
    const guestTimedOut = timeoutMs !== undefined && (result.exitCode === TIMED_OUT_EXIT_CODE || result.exitCode === 137) && result.durationMs >= timeoutMs
    return guestTimedOut ? { ...result, exitCode: TIMED_OUT_EXIT_CODE, timedOut: true } : result
  }

  const vm: Vm = {
    name: vmName,
    provider,
    record,
    exec,
    async putFile(path: string, data: string | Buffer): Promise<void> {
      const result = await exec(['sh', '-c', 'cat > "$1"', 'sh', path], { input: data })
      if (result.exitCode !== 0) throw transferFailed('putFile', path, result)
    },
    async getFile(path: string): Promise<Buffer> {
      // stdout travels as text: base64 keeps binary files intact.
      const result = await exec(['base64', '--', path])
      if (result.exitCode !== 0) throw transferFailed('getFile', path, result)
      return Buffer.from(result.stdout, 'base64')
    },
    async close() {},
    async [Symbol.asyncDispose]() {},
  }

  function transferFailed(operation: string, path: string, result: ExecResult): VmPoolError {
    return new VmPoolError({
      code: 'VMPOOL_EXEC_FAILED',
      provider,
      operation,
      vm: vmName,
      message: `${operation} ${JSON.stringify(path)} on ${vmName} failed with exit code ${result.exitCode}: ${result.stderr.trim().slice(0, 500)}`,
      details: { path, exitCode: result.exitCode },
    })
  }
  return vm
}

/**
 * Poll `exec('true')` until it succeeds, within the named timeout in `timeout`. Errors other than a
 * failed exec (daemon unavailable, VM gone) end the wait at once: waiting will not fix them.
 */
export async function waitUntilExecWorks(vm: Vm, timeout: WithTimeoutOptions): Promise<void> {
  const stop = new AbortController()
  const poll = async () => {
    while (!stop.signal.aborted) {
      try {
        if ((await vm.exec('true', { signal: stop.signal, timeoutMs: scaleTimeout(READY_PROBE_TIMEOUT_MS) })).exitCode === 0) return
      } catch (error) {
        if (stop.signal.aborted) return
        if (!isVmPoolError(error, 'VMPOOL_EXEC_FAILED')) throw error
      }
      await sleep(READY_POLL_INTERVAL_MS, stop.signal).catch(() => undefined)
    }
  }
  try {
    await withTimeout(poll(), timeout)
  } finally {
    stop.abort()
  }
}
