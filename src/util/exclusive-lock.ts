import { acquireAbstractSocketLock } from './abstract-socket-lock.js'
import type { HeldLock } from './lock-timeout-error.js'
import { acquireSymlinkLock } from './symlink-lock.js'

export { LockTimeoutError, type HeldLock } from './lock-timeout-error.js'

/**
 * A cross-process mutex named by a file path, exclusive in every interleaving, also when a holder is
 * SIGKILLed inside its critical section, and with no clock involved (a lock stamped in the future cannot
 * block anyone). Two implementations:
 * - `abstract-socket` (Linux, the default there): a unix socket bound in the abstract namespace. Binding is
 *   exclusive and the kernel frees the name the instant its holder dies; waiters connect to the holder and
 *   retry the moment it closes. Limit: processes that share the file must share a network namespace.
 * - `symlink` (elsewhere): a symlink whose target names its holder (host, pid, start time). A holder judged
 *   dead on this host is broken by one waiter only (see symlink-lock.ts). Limit: a holder on another host
 *   cannot be judged, so its stale lock blocks until it is removed by hand.
 * See docs/pool.md ("The lock").
 */
export type ExclusiveLockKind = 'abstract-socket' | 'symlink'

export interface ExclusiveLockOptions {
  /** Give up after this long with a `LockTimeoutError`. Already scaled by the caller. */
  timeoutMs: number
  /** @default 'abstract-socket' on Linux, else 'symlink' */
  kind?: ExclusiveLockKind
}

export function getDefaultLockKind(platform: NodeJS.Platform = process.platform): ExclusiveLockKind {
  return platform === 'linux' ? 'abstract-socket' : 'symlink'
}

/** Wait for the lock named by `path` (the file it guards; the lock itself lives beside it or in the kernel). */
export function acquireExclusiveLock(path: string, options: ExclusiveLockOptions): Promise<HeldLock> {
  const kind = options.kind ?? getDefaultLockKind()
  return kind === 'abstract-socket' ? acquireAbstractSocketLock(path, options.timeoutMs) : acquireSymlinkLock(path, options.timeoutMs)
}
