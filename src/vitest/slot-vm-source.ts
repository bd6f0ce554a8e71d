import { isVmPoolError } from '../errors.js'
import { createPool, type FreshVm, type VmLease, type VmPool } from '../pool/vm-pool.js'
import type { JsonValue, VmProvider, VmRecord, VmSpec } from '../providers/vm-provider.js'

/**
 * Where the Vitest integration gets its VMs: the pool (issue #4), keyed by worker slot.
 * Kept as a small interface so the main-process run state only sees what it needs.
 */
export interface SlotVmSource {
  /** Identifies this run in VM names. */
  readonly runId: string
  /** The slot's VM: booted (or adopted warm) on first use, the same one until `discard`. */
  acquire(slot: number): Promise<SlotVm>
  /** The slot's VM state is unknown (its worker crashed): delete it, never keep it warm; the next `acquire` gets a new one. */
  discard(slot: number): Promise<void>
  /** A throwaway VM, deleted by `deleteFresh` or `drain`. */
  fresh(spec: Omit<VmSpec, 'name'>): Promise<VmRecord>
  deleteFresh(name: string): Promise<void>
  /** Delete everything (or hand worker VMs back warm). */
  drain(): Promise<{ keptWarm: string[]; leaked: string[] }>
}

export interface SlotVm {
  record: VmRecord
  /** True when this VM was booted by an earlier run (or `vm-pool warm`) and adopted warm. */
  adopted: boolean
}

export interface SlotVmSourceEvents {
  /** A VM this run booted; `slot` is `null` for a fresh VM. */
  onCreated?(record: VmRecord, slot: number | null, bootMs: number): void
  onDeleted?(name: string): void
}

export interface PoolSlotVmSourceOptions {
  provider: VmProvider
  /** How the reaper (a detached watchdog of this process) rebuilds the provider to clean up after a crash. */
  providerName: string
  providerOptions: Record<string, JsonValue>
  prefix: string
  spec: Omit<VmSpec, 'name'>
  keepWarm: { ttlMs: number; max: number; reset?: string } | undefined
  stateDir: string | undefined
  events?: SlotVmSourceEvents
}

/**
 * Slot VMs from `createPool`. The pool is created in the process that calls this — the Vitest main
 * process — so that is the owner its reaper watches: Ctrl-C or `kill -9` of `vitest run`, which skip
 * Vitest's teardown, still end with the run's VMs deleted.
 */
export function poolSlotVmSource(options: PoolSlotVmSourceOptions): SlotVmSource {
  const pool: VmPool = createPool({
    provider: options.provider,
    prefix: options.prefix,
    spec: options.spec,
    keepWarm: options.keepWarm,
    stateDir: options.stateDir,
    reaper: { providerName: options.providerName, providerOptions: options.providerOptions },
  })
  const leases = new Map<number, Promise<VmLease>>()
  /** VMs a slot had so far: a replacement gets its own key (`<slot>-<n>`), so never the crashed VM's name. */
  const generations = new Map<number, number>()
  const fresh = new Map<string, FreshVm>()
  const events = options.events ?? {}

  return {
    runId: pool.runId,
    async acquire(slot) {
      let lease = leases.get(slot)
      if (!lease) {
        const generation = (generations.get(slot) ?? 0) + 1
        generations.set(slot, generation)
        const started = performance.now()
        const created = pool.acquire(generation === 1 ? slot : `${slot}-${generation}`).then((acquired) => {
          if (!acquired.adopted) events.onCreated?.(acquired.vm.record, slot, performance.now() - started)
          return acquired
        })
        lease = created
        leases.set(slot, created)
        // A failed boot must not stick: the next acquire tries again.
        created.catch(() => {
          if (leases.get(slot) === created) leases.delete(slot)
        })
      }
      const acquired = await lease
      return { record: acquired.vm.record, adopted: acquired.adopted }
    },
    async discard(slot) {
      const lease = leases.get(slot)
      leases.delete(slot)
      const acquired = await lease?.catch(() => undefined)
      if (!acquired) return
      await acquired.release({ discard: true })
      events.onDeleted?.(acquired.name)
    },
    async fresh(spec) {
      const started = performance.now()
      const vm = await pool.fresh(spec)
      fresh.set(vm.name, vm)
      events.onCreated?.(vm.record, null, performance.now() - started)
      // The pool connected it here; the worker connects on its own.
      await vm.close?.()
      return vm.record
    },
    async deleteFresh(name) {
      const vm = fresh.get(name)
      if (!vm) return
      fresh.delete(name)
      await vm.delete()
      events.onDeleted?.(name)
    },
    async drain() {
      let result: { keptWarm: string[]; deleted: string[]; leaked: string[] }
      try {
        result = await pool.drain()
      } catch (error) {
        // drain() still did what it could; the details say what.
        const details = isVmPoolError(error, 'VMPOOL_DELETE_FAILED') ? (error.details as typeof result | undefined) : undefined
        if (!details) throw error
        result = details
      }
      for (const name of result.deleted) events.onDeleted?.(name)
      leases.clear()
      fresh.clear()
      return { keptWarm: result.keptWarm, leaked: result.leaked }
    },
  }
}
