/**
 * The provider contract. Its names are public API (docs/architecture.md): add, never rename.
 * Optional capabilities are optional members, never stubs that throw. The exec contract
 * (`ExecOptions`, `ExecResult`) lives in the transport layer below and is re-exported here.
 */
import type { ExecOptions, ExecResult } from '../transport/exec-types.js'
import type { ForwardPortOptions, PortForward } from '../transport/port-forward.js'

export type { ExecBufferResult, ExecOptions, ExecResult } from '../transport/exec-types.js'
export type { ForwardPortOptions, PortForward } from '../transport/port-forward.js'


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

/**
 * A VM reached from this process (docs/providers.md has what each provider does). Guest paths that are
 * relative are under the VM user's home directory.
 */
export interface Vm extends AsyncDisposable {
  /** e.g. `vitest-worker-<runId>-<slot>` */
  readonly name: string
  /** 'qemu' | 'multipass' | ... */
  readonly provider: string
  readonly record: VmRecord
  /** A string is a shell line; an array is argv, quoted safely. Execs on one VM run concurrently. */
  exec(command: string | string[], options?: ExecOptions): Promise<ExecResult>
  /** Write a file in the guest (its directory must exist); the bytes travel as they are. */
  putFile(path: string, data: string | Buffer): Promise<void>
  /** Read a whole file from the guest. */
  getFile(path: string): Promise<Buffer>
  /**
   * Copy a local directory into `guestDir` (made if missing) as a tar stream: permission bits,
   * symlinks (as links) and empty directories are kept; owners are the guest user's.
   */
  putDirectory(localDir: string, guestDir: string): Promise<void>
  /**
   * Copy `guestDir` into `localDir` (made if missing), as `putDirectory` does the other way. An archive
   * entry that would land outside `localDir` (`..`, an absolute path, a path through a symlink) is
   * refused with VMPOOL_UNSAFE_PATH before anything is written for it.
   */
  getDirectory(guestDir: string, localDir: string): Promise<void>
  /**
   * A TCP port on 127.0.0.1 that reaches `guestPort` in the guest (also a server bound to the guest's
   * loopback, where the provider can). Closed by `close()`, by disposing it, by closing this Vm, or by
   * deleting the VM. A provider whose tool cannot forward ports rejects with VMPOOL_UNSUPPORTED and a
   * hint saying how to reach the guest instead.
   */
  forwardPort(guestPort: number, options?: ForwardPortOptions): Promise<PortForward>
  /** Close connections and port forwards held by this process. Does not delete the VM. `[Symbol.asyncDispose]` is the same unless documented otherwise. */
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
  /**
   * Optional: how a person reaches a VM left running (`--keep-vm`, a kept fresh VM) and how to delete
   * that VM alone, as one-line commands or instructions. Never contains secrets (a key is named by path).
   */
  describe?(record: VmRecord): KeptVmHelp
  /**
   * Optional: what makes the VMs this provider would create for `spec` differ from other VMs — the spec
   * with this provider's options and defaults applied (qemu: image and image folder, cpus, memory, accel).
   * Pools hash it together with the spec (`getSpecHash`), so an idle VM is adopted only by a pool whose
   * provider would have created the same VM: `vm-pool warm`, Vitest's `vmPool({ providerOptions })` and
   * `createPool` agree as long as the options agree. Plain JSON data, computed without I/O; never secrets
   * (tokens, keys, passwords: leave them out or put a hash of them in).
   */
  fingerprint?(spec: Omit<VmSpec, 'name'>): Record<string, unknown>
  /**
   * Optional: the local command that gets a person into the VM — an interactive shell with a TTY, or
   * `command` run there when given (`vm-pool ssh NAME [-- command...]` runs it with inherited stdio).
   * `undefined` when this VM cannot be reached that way (then `vm-pool ssh` falls back to exec). Never
   * contains secrets: a key is named by its path.
   */
  shell?(record: VmRecord, command?: string[]): LocalCommand | undefined
  /**
   * Optional: whether the VM behind `record` still runs, found out on this host without a guest command
   * (the fake: its sandbox is there; qemu: its QEMU process runs). Cheap: a pool asks it before handing a
   * connection it kept for a moment (`PARKED_CONNECTION_TTL_MS`) out again; without it, the pool runs `true`
   * on that connection instead. It says nothing about the guest's health beyond that.
   */
  isRunning?(record: VmRecord): Promise<boolean>
}

/** What `VmProvider.shell` returns: a process to start on this host. */
export interface LocalCommand {
  argv: string[]
  cwd?: string
  /** Added to the caller's environment. */
  env?: Record<string, string>
}

/** What `VmProvider.describe` returns. */
export interface KeptVmHelp {
  /** A command (or instruction) that gets a shell in the VM. */
  reach: string
  /** A command (or instruction) that deletes this VM and no other. */
  remove: string
}
