import { hostname } from 'node:os'
import { getProcessStartTime, isProcessAlive, type ProcessIdentity } from '../util/process-info.js'

/**
 * How often the helper looks at its runner process. stdin EOF usually tells first (the runner's end of the
 * pipe closes when it dies); this catches a runner whose pipe is held open by one of its children.
 */
export const RUNNER_POLL_INTERVAL_MS = 250

/** Calls `onGone` once, when the watched process is no longer the one that was running at `watch()` time. */
export class RunnerWatch {
  #identity: ProcessIdentity | undefined
  #timer: NodeJS.Timeout | undefined
  #onGone: (pid: number) => void

  constructor(onGone: (pid: number) => void) {
    this.#onGone = onGone
  }

  get pid(): number | undefined {
    return this.#identity?.pid
  }

  /** Watch `pid` from now on (its start time is read now, so a later reuse of the pid counts as gone). */
  watch(pid: number): void {
    this.#identity = { pid, host: hostname(), startTime: getProcessStartTime(pid) }
    if (this.#timer) return
    this.#timer = setInterval(() => {
      if (this.#identity && !isProcessAlive(this.#identity)) {
        const gone = this.#identity.pid
        this.stop()
        this.#onGone(gone)
      }
    }, RUNNER_POLL_INTERVAL_MS)
    // Never the reason the helper stays alive.
    this.#timer.unref()
  }

  /** The watched process is still the one it was at `watch()` time. */
  isAlive(): boolean {
    return this.#identity !== undefined && isProcessAlive(this.#identity)
  }

  stop(): void {
    clearInterval(this.#timer)
    this.#timer = undefined
  }
}
