import { buffer } from 'node:stream/consumers'
import { VmPoolError } from '../errors.js'
import { createDirectorySink, directoryFailed, guestExtractArgv } from '../transport/guest-directory.js'
import { abortedError, TIMED_OUT_EXIT_CODE } from '../transport/process-runner.js'
import { makeGuestExec } from '../transport/guest-exec-script.js'
import type { CommandRunOptions } from '../transport/command-runner.js'
import { validateForwardPorts } from '../transport/port-forward.js'
import { packDirectory } from '../transport/tar/tar-writer.js'
import { scaleTimeout } from '../util/timeouts.js'
import { withExecLog } from './exec-log.js'
import type { ExecOptions, ExecResult, Vm, VmRecord } from './vm-provider.js'

/**
 * `getDirectory` for a stdout that is text: the tar goes to a temporary file in the guest first (so
 * tar's own exit status is kept), then out as base64.
 */
const GUEST_PACK_BASE64_SCRIPT = [
  't=$(mktemp) || exit 1',
  'if (cd -- "$1" && tar -c -f - .) > "$t"; then base64 "$t"; r=$?; else r=$?; fi',
  'rm -f "$t"',
  'exit "$r"',
].join('\n')

/** How long after `timeoutMs` the local client is killed if the guest `timeout` did not end the command. */
export const EXEC_BACKSTOP_GRACE_MS = 15_000
/** Time allowed for the second connection that kills an aborted or overdue command. */
export const EXEC_KILL_TIMEOUT_MS = 30_000

export interface CliGuestVmOptions {
  record: VmRecord
  provider: string
  /**
   * Run `argv` inside the guest: through the manager's CLI (`multipass exec`, `orbctl run`) or an API
   * call (Firecracker's execute). `timeoutMs` is the backstop: when it runs out, stop waiting and
   * resolve with `timedOut: true`. An aborted `signal` rejects with `VMPOOL_EXEC_ABORTED`.
   */
  runInGuest(argv: string[], options: CommandRunOptions): Promise<ExecResult>
  /** A VmPoolError when the result is the CLI's own failure (VM gone, daemon down), not the command's. */
  classifyFailure?(result: ExecResult, operation: string): VmPoolError | undefined
  /**
   * Added to `timeoutMs` for the backstop passed to `runInGuest`: the guest-side `timeout` should end
   * the command first. Not scaled here. @default EXEC_BACKSTOP_GRACE_MS scaled by VM_POOL_TIMEOUT_SCALE
   */
  backstopGraceMs?: number
  /**
   * The tool cannot forward a port: why, and how to reach the guest's port instead (the instance's
   * address, a DNS name). `forwardPort` rejects with VMPOOL_UNSUPPORTED carrying both.
   */
  forwardPortUnsupported(guestPort: number): Promise<{ message: string; hint: string }>
}

/**
 * A `Vm` whose commands go through a VM manager's CLI or API: the one guest-exec strategy of every
 * provider that cannot open its own channel to the guest (multipass, orbstack, firecracker). The
 * command is wrapped by `makeGuestExec` so timeouts and aborts kill it inside the guest (killing the
 * local client alone would leave it running there), and file transfer goes through `cat` / `base64`
 * so it works wherever exec works: files and directory archives are held in memory whole on the way
 * (no streaming stdin through these tools), fine for test fixtures, not for gigabytes.
 */
export function createCliGuestVm(options: CliGuestVmOptions): Vm {
  const { record, provider } = options
  const vmName = record.name
  const backstopGraceMs = options.backstopGraceMs ?? scaleTimeout(EXEC_BACKSTOP_GRACE_MS)

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
        timeoutMs: timeoutMs === undefined ? undefined : timeoutMs + backstopGraceMs,
        signal: execOptions.signal,
        onStdout: execOptions.onStdout,
        onStderr: execOptions.onStderr,
        maxOutputBytes: execOptions.maxOutputBytes,
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
    const failure = options.classifyFailure?.(result, 'exec')
    if (failure) throw failure
    // GNU timeout exits 124 (137 after its -k SIGKILL); a command that exits 124 by itself before the
    // limit is not a timeout, hence the elapsed-time check.
    const guestTimedOut = timeoutMs !== undefined && (result.exitCode === TIMED_OUT_EXIT_CODE || result.exitCode === 137) && result.durationMs >= timeoutMs
    return guestTimedOut ? { ...result, exitCode: TIMED_OUT_EXIT_CODE, timedOut: true } : result
  }

  const context = { provider, vm: vmName }
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
      const result = await exec(['base64', '--', path], { maxOutputBytes: Number.POSITIVE_INFINITY })
      if (result.exitCode !== 0) throw transferFailed('getFile', path, result)
      return Buffer.from(result.stdout, 'base64')
    },
    async putDirectory(localDir: string, guestDir: string): Promise<void> {
      const archive = await buffer(packDirectory(localDir))
      const result = await exec(guestExtractArgv(guestDir), { input: archive })
      if (result.exitCode !== 0) throw directoryFailed('putDirectory', guestDir, result, context)
    },
    async getDirectory(guestDir: string, localDir: string): Promise<void> {
      const result = await exec(['sh', '-c', GUEST_PACK_BASE64_SCRIPT, 'sh', guestDir], { maxOutputBytes: Number.POSITIVE_INFINITY })
      const sink = createDirectorySink(localDir, guestDir, context)
      if (result.exitCode === 0) {
        try {
          await sink.write(Buffer.from(result.stdout, 'base64'))
        } catch (error) {
          await sink.abort()
          throw error
        }
      }
      await sink.finish(result)
    },
    async forwardPort(guestPort, forwardOptions) {
      validateForwardPorts(guestPort, forwardOptions, context)
      const { message, hint } = await options.forwardPortUnsupported(guestPort)
      throw new VmPoolError({ code: 'VMPOOL_UNSUPPORTED', ...context, operation: 'forwardPort', message, hint, details: { guestPort } })
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
  return withExecLog(vm)
}
