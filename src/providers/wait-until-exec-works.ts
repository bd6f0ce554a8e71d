import { isVmPoolError } from '../errors.js'
import { scaleTimeout, sleep, withTimeout, type WithTimeoutOptions } from '../util/timeouts.js'
import type { Vm } from './vm-provider.js'

const READY_POLL_INTERVAL_MS = 500
/** How long one readiness probe (`true` in the guest) may take before the next one. */
export const READY_PROBE_TIMEOUT_MS = 10_000

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
