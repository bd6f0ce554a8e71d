/**
 * The exec contract every way of running a command speaks: local processes, SSH channels, VM manager
 * CLIs and HTTP APIs. It sits at the bottom of the transport layer so nothing here imports upward;
 * `providers/vm-provider.ts` re-exports it as part of the public `Vm` contract.
 */

export interface ExecResult {
  exitCode: number
  /** Set when the remote process was ended by a signal, e.g. `SIGKILL`. */
  signal?: string
  stdout: string
  stderr: string
  durationMs: number
  /** True when `timeoutMs` ran out and the command was killed; `exitCode` is then 124. */
  timedOut: boolean
}

export interface ExecOptions {
  /** Working directory. Relative paths are resolved against the VM user's home directory. */
  cwd?: string
  /** Extra environment variables; names must match `[A-Za-z_][A-Za-z0-9_]*`. */
  env?: Record<string, string>
  /** Kill the command after this many milliseconds and return `timedOut: true`. The VM stays usable. */
  timeoutMs?: number
  /** Written to the command's stdin, then stdin is closed. */
  input?: string | Buffer
  /** Aborting kills the command and rejects with `VMPOOL_EXEC_ABORTED`. */
  signal?: AbortSignal
  onStdout?: (chunk: string) => void
  onStderr?: (chunk: string) => void
}

/** An exec whose stdout is kept as bytes (`getFile`, binary output). */
export type ExecBufferResult = Omit<ExecResult, 'stdout'> & { stdout: Buffer }
