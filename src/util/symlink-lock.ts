import { createHash, randomBytes } from 'node:crypto'
import { readlink, symlink, unlink } from 'node:fs/promises'
import { LockTimeoutError, type HeldLock } from './lock-timeout-error.js'
import { getCurrentProcessIdentity, isProcessAlive, type ProcessIdentity } from './process-info.js'

/** Between tries while a live holder has the lock (no hand-off signal on this path). */
const RETRY_MIN_MS = 2
const RETRY_MAX_MS = 10
/** How deep a chain of dead breakers is followed (each level needs another process SIGKILLed mid-break). */
const MAX_BREAK_DEPTH = 4

/**
 * The portable lock of exclusive-lock.ts: `<path>.lock` is a symlink whose target names the holder and is
 * unique per acquisition. `symlink()` creates it atomically with its content, or fails with EEXIST.
 *
 * Breaking a dead holder's lock is where proper-lockfile goes wrong (two waiters both judge it stale and
 * the second deletes the lock the first just took). Here the break of target T is itself guarded by a
 * symlink named after T (`<path>.lock.break-<hash of T>`): only its creator may unlink a lock whose target
 * is still T, and no live lock ever has target T again. A breaker that dies mid-break leaves a guard whose
 * own holder is dead: the same rule applies one level down.
 */
export async function acquireSymlinkLock(path: string, timeoutMs: number): Promise<HeldLock> {
  const lockPath = `${path}.lock`
  const target = makeTarget()
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      await symlink(target, lockPath)
      return holding(lockPath, target)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    }
    const current = await readTarget(lockPath)
    if (current !== null && isDeadTarget(current)) {
      await breakLock(lockPath, current, 0)
      continue
    }
    if (Date.now() >= deadline) throw new LockTimeoutError(`${describeTarget(current)} (the symlink ${lockPath})`, timeoutMs)
    await new Promise((resolve) => setTimeout(resolve, RETRY_MIN_MS + Math.random() * (RETRY_MAX_MS - RETRY_MIN_MS)))
  }
}

function holding(lockPath: string, target: string): HeldLock {
  let released: Promise<void> | undefined
  return {
    release() {
      // Only ours is removed: a lock with our target is ours (nobody breaks a live holder's lock).
      released ??= readTarget(lockPath).then((current) => (current === target ? unlink(lockPath).catch(() => {}) : undefined))
      return released
    },
  }
}

/** Remove `lockPath` if it still points at the dead `target`; only the creator of the guard for `target` may. */
async function breakLock(lockPath: string, target: string, depth: number): Promise<void> {
  const guard = `${lockPath}.break-${createHash('sha256').update(target).digest('hex').slice(0, 16)}`
  try {
    await symlink(makeTarget(), guard)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    // Another waiter is breaking it; unless that one died too.
    const breaker = await readTarget(guard)
    if (breaker !== null && depth < MAX_BREAK_DEPTH && isDeadTarget(breaker)) await breakLock(guard, breaker, depth + 1)
    return
  }
  try {
    if ((await readTarget(lockPath)) === target) await unlink(lockPath)
  } finally {
    await unlink(guard).catch(() => {})
  }
}

interface LockTarget extends ProcessIdentity {
  nonce: string
}

function makeTarget(): string {
  const target: LockTarget = { ...getCurrentProcessIdentity(), nonce: randomBytes(8).toString('hex') }
  return `vm-pool-lock:${JSON.stringify(target)}`
}

function parseTarget(text: string): LockTarget | null {
  try {
    const value = JSON.parse(text.replace(/^vm-pool-lock:/, '')) as LockTarget
    return typeof value.pid === 'number' && typeof value.host === 'string' ? value : null
  } catch {
    return null
  }
}

/** Dead only when we can tell: a holder on another host (or an unreadable target) counts as alive. */
function isDeadTarget(text: string): boolean {
  const holder = parseTarget(text)
  return holder !== null && !isProcessAlive({ pid: holder.pid, host: holder.host, startTime: holder.startTime ?? null })
}

function describeTarget(text: string | null): string {
  const holder = text === null ? null : parseTarget(text)
  return holder ? `pid ${holder.pid} on ${holder.host}` : 'an unknown holder'
}

async function readTarget(path: string): Promise<string | null> {
  try {
    return await readlink(path)
  } catch {
    return null
  }
}
