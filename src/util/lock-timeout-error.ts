/** A lock held between `acquire` and `release` (see exclusive-lock.ts). */
export interface HeldLock {
  /** Idempotent. */
  release(): Promise<void>
}

/** The lock stayed taken for the whole wait; `holder` says who had it, for the message. */
export class LockTimeoutError extends Error {
  readonly holder: string
  constructor(holder: string, timeoutMs: number) {
    super(`the lock was still held after ${timeoutMs} ms by ${holder}`)
    this.name = 'LockTimeoutError'
    this.holder = holder
  }
}
