import type { SerializedVmPoolError } from '../errors.js'
import type { JsonValue, VmRecord } from '../providers/vm-provider.js'

/** The `providedContext` key under which the main process hands each worker its slot binding. */
export const WORKER_CONTEXT_KEY = 'vmPool'

/**
 * What a worker receives with every `run` request (plain data: it crosses the IPC channel).
 * Built in the main process by the pool worker when the worker's slot is bound.
 */
export interface VmPoolWorkerContext {
  /** Provider name and options, so the worker can `createProvider()` and `connect(record)`. */
  provider: string
  providerOptions: Record<string, JsonValue>
  /** The worker slot (`VITEST_POOL_ID`). */
  slot: number
  /** The slot's VM; absent when binding it failed (then `error` says why). */
  record?: VmRecord
  error?: SerializedVmPoolError
  /** Identifies this worker to the freshVm broker: the broker deletes what a dead worker owned. */
  owner: string
  /** Unix socket of the freshVm broker. */
  brokerSocket: string
  /** `vmPool({ keepOnFailure })`: fresh VMs of a failed test are kept, not deleted. */
  keepOnFailure?: boolean
  /** `VM_POOL_TIMEOUT_SCALE` of the run, applied in the worker too. */
  timeoutScale?: number
}

declare module 'vitest' {
  interface ProvidedContext {
    vmPool: VmPoolWorkerContext
  }
}
