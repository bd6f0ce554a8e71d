/**
 * The exec contract every way of running a command speaks: local processes, SSH channels, VM manager
 * CLIs and HTTP APIs. It sits at the bottom of the transport layer so nothing here imports upward;
 * `providers/vm-provider.ts` re-exports it as part of the public `Vm` contract.
 */

/**
 * Bytes of each stream (stdout, stderr) an `ExecResult` keeps when `maxOutputBytes` is not given: the
 * first half and the last half of that; what lies between is dropped (and counted), so memory stays flat
 * whatever a command prints. `onStdout` / `onStderr` still see every byte.
 */
export const DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024

export interface ExecResult {
  exitCode: number
  /** Set when the remote process was ended by a signal, e.g. `SIGKILL`. */
  signal?: string
  /**
   * The command's stdout. When it printed more than `maxOutputBytes`, its head and tail joined by one
   * line `[vm-pool: N bytes of stdout dropped (maxOutputBytes)]`, and `stdoutDroppedBytes` is N.
   */
  stdout: string
  /** Like `stdout`, for stderr (`stderrDroppedBytes`). */
  stderr: string
  /** Present when stdout went over `maxOutputBytes`: how many bytes from its middle are not in `stdout`. */
  stdoutDroppedBytes?: number
  /** Present when stderr went over `maxOutputBytes`: how many bytes from its middle are not in `stderr`. */
  stderrDroppedBytes?: number
  durationMs: number
  /** True when `timeoutMs` ran out and the command was killed (or never started); `exitCode` is then 124. */
  timedOut: boolean
}

export interface ExecOptions {
  /** Working directory. Relative paths are resolved against the VM user's home directory. */
  cwd?: string
  /** Extra environment variables; names must match `[A-Za-z_][A-Za-z0-9_]*`. */
  env?: Record<string, string>
  /**
   * Kill the command after this many milliseconds, counted from the call (a wait for a free connection
   * included), and return `timedOut: true`. The VM stays usable.
   */
  timeoutMs?: number
  /** Written to the command's stdin, then stdin is closed. */
  input?: string | Buffer
  /** Aborting kills the command and rejects with `VMPOOL_EXEC_ABORTED`. */
  signal?: AbortSignal
  /** Every chunk of stdout as it arrives (decoded as UTF-8), also what `maxOutputBytes` drops. */
  onStdout?: (chunk: string) => void
  /** Every chunk of stderr as it arrives, also what `maxOutputBytes` drops. */
  onStderr?: (chunk: string) => void
  /**
   * Bytes of stdout and of stderr (each) kept in the result: the first and the last half of it.
   * `Infinity` keeps everything. @default DEFAULT_MAX_OUTPUT_BYTES
   */
  maxOutputBytes?: number
}

/** An exec whose stdout is kept as bytes (`getFile`, binary output). */
export type ExecBufferResult = Omit<ExecResult, 'stdout'> & { stdout: Buffer }
