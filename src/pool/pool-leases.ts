import type { VmProvider } from '../providers/vm-provider.js'
import { createDebug } from '../util/debug.js'
import { getCurrentProcessIdentity } from '../util/process-info.js'
import { deleteAnnounced } from './announced-delete.js'
import type { HeldVms } from './held-vms.js'
import type { LeaseStore, LeaseTable } from './lease-store.js'
import { announceDelete, restoreHeld, sweepUnheld, type LeaseActor } from './lease-table.js'
import type { OwnerLiveness } from './owner-liveness.js'

const debug = createDebug('vm-pool:pool')

/** Counters for the end-of-run line `vm-pool: N created, N reused, N deleted, N leaked`. A live view. */
export interface PoolStats {
  /** VMs this pool booted (`provider.create`). */
  created: number
  /** Leases served without a boot: an idle warm VM adopted, or the same key acquired again while held. */
  reused: number
  /** VMs this pool deleted: released without keepWarm, fresh VMs, evicted idle VMs, dead holders' VMs. */
  deleted: number
  /** VMs handed back as idle warm VMs. */
  warmed: number
  /** VMs this pool could not delete or hand back (a delete failed). */
  leaked: number
}

/** What the pool did, for its stats and for `drain()`'s result. */
export interface PoolLedger {
  readonly counters: PoolStats
  readonly drainLog: { keptWarm: Set<string>; deleted: Set<string>; leaked: Set<string> }
}

/**
 * The pool's side of the lease store: every update goes through here, and rides the host's housekeeping
 * along, so warm VMs stay bounded without a daemon — our own entries are put back if the lease file lost
 * them, and idle VMs past their ttl and VMs whose holder died are announced for deletion (lease-table.ts
 * `sweepUnheld`) and deleted in the background. Every delete goes through `deleteAnnounced`.
 */
export class PoolLeases {
  readonly actor: LeaseActor
  readonly #store: LeaseStore
  readonly #provider: VmProvider
  readonly #held: HeldVms
  readonly #ledger: PoolLedger
  readonly #liveness: OwnerLiveness
  readonly #warn: (message: string) => void
  readonly #background = new Set<Promise<unknown>>()

  constructor(options: { store: LeaseStore; provider: VmProvider; runId: string; held: HeldVms; ledger: PoolLedger; liveness: OwnerLiveness; warn: (message: string) => void }) {
    this.actor = { owner: getCurrentProcessIdentity(), runId: options.runId }
    this.#store = options.store
    this.#provider = options.provider
    this.#held = options.held
    this.#ledger = options.ledger
    this.#liveness = options.liveness
    this.#warn = options.warn
  }

  async update<T>(mutate: (table: LeaseTable, now: number) => T): Promise<T> {
    const { result, evict } = await this.#store.update((table) => {
      const now = Date.now()
      restoreHeld(table, this.#held.entries())
      const evict = sweepUnheld(table, this.#provider.name, this.actor, this.#liveness, now)
      return { result: mutate(table, now), evict }
    })
    for (const name of evict) {
      debug('evicting %s (idle past its ttl, or its holder died)', name)
      this.deleteInBackground(name)
    }
    return result
  }

  /** Announce, delete, drop (`deleteAnnounced`), counted in the stats. Rejects when the delete failed: the entry stays `deleting`, counted as leaked. */
  async deleteByName(name: string, count = true): Promise<void> {
    const { failed } = await deleteAnnounced(
      { update: (mutate) => this.update(mutate), provider: this.#provider, actor: this.actor, onDropped: (dropped) => this.#held.forget(dropped) },
      (table, now) => {
        announceDelete(table, name, this.actor, now)
        return { names: [name], result: undefined }
      },
    )
    const { counters, drainLog } = this.#ledger
    if (failed.length > 0) {
      counters.leaked++
      drainLog.leaked.add(name)
      throw failed[0]!.error
    }
    drainLog.keptWarm.delete(name)
    if (count) {
      counters.deleted++
      drainLog.deleted.add(name)
    }
    // Dropped under the lock already, unless someone took the entry over meanwhile: it is not ours either way.
    this.#held.forget(name)
  }

  /** Already announced (housekeeping, eviction over `max`): delete without making the caller wait. `drain()` waits. */
  deleteInBackground(name: string): void {
    const job = this.deleteByName(name).catch((error: unknown) => this.#warn(`could not delete ${name}: ${(error as Error).message}`))
    this.#background.add(job)
    void job.finally(() => this.#background.delete(job))
  }

  async settleBackground(): Promise<void> {
    while (this.#background.size > 0) await Promise.allSettled([...this.#background])
  }
}
