/**
 * The provider contract. Names are part of the public API (see DESIGN.md): add, never rename.
 * Optional capabilities are optional members, never stubs that throw.
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

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue }

/** Serializable: everything another process needs (with the same provider options) to reach this VM. */
export interface VmRecord {
  name: string
  provider: string
  /** ISO timestamp. */
  createdAt: string
  spec: VmSpec
  /** Provider-specific connection data (ports, ids, paths). Never secrets. */
  data: { [key: string]: JsonValue }
}

export interface VmSpec {
  name: string
  image?: string
  cpus?: number
  memoryMiB?: number
  diskGiB?: number
  labels?: Record<string, string>
}

export type VmState = 'running' | 'starting' | 'stopped' | 'dead' | 'unknown'

export interface VmInfo {
  name: string
  provider: string
  state: VmState
  /** ISO timestamp, when the provider knows it. */
  createdAt?: string
  labels?: Record<string, string>
  /** Present when the provider can reconnect to this VM. */
  record?: VmRecord
}

export interface Vm extends AsyncDisposable {
  /** e.g. `vitest-worker-<runId>-<slot>` */
  readonly name: string
  /** 'qemu' | 'multipass' | ... */
  readonly provider: string
  readonly record: VmRecord
  /** A string is a shell line; an array is argv, quoted safely. */
  exec(command: string | string[], options?: ExecOptions): Promise<ExecResult>
  putFile?(path: string, data: string | Buffer): Promise<void>
  getFile?(path: string): Promise<Buffer>
  /** Close connections held by this process. Does not delete the VM. `[Symbol.asyncDispose]` is the same unless documented otherwise. */
  close?(): Promise<void>
}

/** What `vm-pool doctor` prints for a provider. */
export interface ProviderProbe {
  usable: boolean
  /** One line: why it is (not) usable. */
  reason: string
  /** Name → value facts, e.g. `{ binary: '/usr/bin/qemu-system-x86_64', accel: 'tcg' }`. */
  details?: Record<string, string>
  /** How to make it usable. */
  hint?: string
}

export interface VmProvider {
  readonly name: string
  /** Launch AND wait until exec works (a named, env-scalable timeout). */
  create(spec: VmSpec): Promise<VmRecord>
  /** Attach from any process (main, worker, CLI). */
  connect(record: VmRecord): Promise<Vm>
  /** Idempotent: "not found" is success. */
  delete(name: string): Promise<void>
  /** Every VM this provider can see (gc needs it). */
  list(): Promise<VmInfo[]>
  /** Optional: is this provider usable on this machine, and why not. */
  probe?(): Promise<ProviderProbe>
  /** Optional: release resources this provider object holds in this process (connections, agents). */
  close?(): Promise<void>
  /**
   * Optional: put the VM back to the provider's clean saved state (qemu: its snapshot), keeping its
   * name. Returns the new record (ports and pids may change). Used by `keepWarm: { reset: 'snapshot' }`.
   */
  reset?(name: string): Promise<VmRecord>
}
