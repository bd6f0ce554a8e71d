import type { VmProvider } from '../providers/vm-provider.js'
import { createDebug } from '../util/debug.js'
import { getCurrentProcessIdentity } from '../util/process-info.js'
import { deleteAnnounced } from './announced-delete.js'
import type { HeldVms } from './held-vms.js'
import { VmPoolError } from '../errors.js'
import { cloneEntry, type LeaseEntry, type LeaseStore, type LeaseSwap, type LeaseTable } from './lease-store.js'
import { announceDelete, findLostHolds, restoreHeld, sweepUnheld, type LeaseActor } from './lease-table.js'
import { hostAwareLiveness, type OwnerLiveness } from './owner-liveness.js'

const debug = createDebug('vm-pool:pool')

/**
 * The warm cycle's shortcut (`trySwap`: one entry, no table) skips the housekeeping sweep that every locked
 * update does; the first hand-back by swap after this long without a sweep (by any pool on the store) runs one.
 * An expired idle VM or a dead holder's VM then waits at most this much longer than "the next pool operation",
 * and idle VMs over keepWarm's `max` are evicted that much later. Not scaled: it bounds a delay, not a timeout.
 */
export const SWEEP_INTERVAL_MS = 1_000

/** What `trySwap` did: the store's answer (`LeaseSwap.entry`), or `declined` when it did not try; `next` is the entry it asked for. */
export interface SwapOutcome {
  result: Awaited<ReturnType<LeaseSwap['entry']>>
  next?: LeaseEntry
}

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
  /** VMs we held and lost to fencing (we were judged dead, e.g. paused past our heartbeat TTL): name → why. */
  readonly #lost = new Map<string, string>()
  /** The store's heartbeat lapses already checked by a fencing update. */
  #checkedLapses = 0

  constructor(options: { store: LeaseStore; provider: VmProvider; runId: string; held: HeldVms; ledger: PoolLedger; liveness: OwnerLiveness; warn: (message: string) => void }) {
    this.actor = { owner: getCurrentProcessIdentity(), runId: options.runId }
    this.#store = options.store
    this.#provider = options.provider
    this.#held = options.held
    this.#ledger = options.ledger
    this.#liveness = options.liveness
    this.#warn = options.warn
  }

  /**
   * One lease update with the housekeeping. `now` is the store's clock; `nextToken` issues fencing tokens when
   * the store has them. Fencing runs first: held VMs that are no longer ours are forgotten and remembered as lost.
   */
  async update<T>(mutate: (table: LeaseTable, now: number, nextToken?: () => number) => T): Promise<T> {
    const { result, evict } = await this.#store.update((table, context) => {
      const { now } = context
      context.swept?.()
      for (const { name, reason } of findLostHolds(table, this.#held.entries(), this.actor)) {
        this.#lost.set(name, reason)
        this.#held.forget(name)
      }
      restoreHeld(table, this.#held.entries())
      const liveness = hostAwareLiveness(this.#liveness, context.remoteLiveness)
      const evict = sweepUnheld(table, this.#provider.name, this.actor, liveness, now)
      return { result: mutate(table, now, context.nextToken), evict }
    })
    for (const name of evict) {
      debug('evicting %s (idle past its ttl, or its holder died)', name)
      this.deleteInBackground(name)
    }
    return result
  }

  /**
   * The warm cycle's shortcut (docs/pool.md, "The warm cycle"): our copy `mine` of an entry, turned by `change`
   * into the next one at the store's `now`, written by the store's swap only while the stored entry still equals
   * `mine`. Declined (the caller takes `update`) when the store has no swap, our heartbeat is not fresh or
   * lapsed (fencing must look first), or `change` says no. `claim`: the store issues the token; `sweep`: the
   * caller runs the housekeeping sweep (an `update`) when the result says `sweepDue` (none ran for SWEEP_INTERVAL_MS).
   */
  async trySwap(mine: LeaseEntry, change: (entry: LeaseEntry, now: number) => LeaseEntry | undefined, options: { claim?: boolean; sweep?: boolean; then?: (written: LeaseEntry) => void } = {}): Promise<SwapOutcome> {
    const swap = this.#store.swap
    const declined: SwapOutcome = { result: 'declined' }
    if (!swap || this.#tokensNeedCheck() !== undefined) return declined
    const now = swap.now()
    const next = now === undefined ? undefined : change(cloneEntry(mine), now)
    if (!next) return declined
    const request = { name: mine.name, expected: mine, next, ...(options.claim ? { claim: true } : {}), ...(options.sweep ? { sweepEveryMs: SWEEP_INTERVAL_MS } : {}) }
    return { result: await swap.entry(request, options.then), next }
  }

  /**
   * Fencing before a VM is used: throws VMPOOL_LEASE_LOST when `name` was taken from us. With a heartbeat
   * store, a lapsed heartbeat (we were paused) or a heartbeat older than half its TTL first re-checks the
   * tokens in one lease update; otherwise this is a map lookup.
   */
  async assertHeld(name: string): Promise<void> {
    const lapses = this.#tokensNeedCheck()
    if (lapses !== undefined) {
      await this.update(() => undefined)
      this.#checkedLapses = lapses
    }
    this.throwIfLost(name)
  }

  /**
   * With a heartbeat store: the store's lapse count when our tokens must be re-checked first (a heartbeat lapsed
   * since the last check, or the last confirmed one is older than half its TTL), else undefined.
   */
  #tokensNeedCheck(): number | undefined {
    const beat = this.#store.heartbeat
    if (!beat) return undefined
    const lapses = (this.#store as { lapses?: number }).lapses ?? 0
    return lapses > this.#checkedLapses || beat.sinceConfirmedMs() > beat.ttlMs / 2 ? lapses : undefined
  }

  throwIfLost(name: string): void {
    const reason = this.#lost.get(name)
    if (reason === undefined) return
    throw new VmPoolError({
      code: 'VMPOOL_LEASE_LOST',
      provider: this.#provider.name,
      operation: 'fencing',
      vm: name,
      message: `this process no longer holds ${name}: ${reason}. Another process judged this one dead (its heartbeat was older than its TTL, e.g. while it was paused) and reclaimed the VM`,
      hint: 'do not use this VM any more; acquire a new one. Long pauses (SIGSTOP, a suspended CI runner) longer than the heartbeat TTL lose leases by design',
    })
  }

  /** Announce, delete, drop (`deleteAnnounced`), counted in the stats. Rejects when the delete failed: the entry stays `deleting`, counted as leaked. */
  async deleteByName(name: string, count = true): Promise<void> {
    const { failed } = await deleteAnnounced(
      { update: (mutate) => this.update(mutate), provider: this.#provider, actor: this.actor, onDropped: (dropped) => this.#held.forget(dropped) },
      (table, now) => {
        // Fenced: the entry is someone else's now; deleting it would take their VM.
        if (this.#lost.has(name)) return { names: [], result: undefined }
        announceDelete(table, name, this.actor, now)
        return { names: [name], result: undefined }
      },
    )
    this.throwIfLost(name)
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
