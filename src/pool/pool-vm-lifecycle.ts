import { VmPoolError, invalidOptions, isVmPoolError } from '../errors.js'
import type { Vm, VmRecord } from '../providers/vm-provider.js'
import { createDebug } from '../util/debug.js'
import { scaleTimeout, sleep, withTimeout } from '../util/timeouts.js'
import { makeVmName } from '../util/vm-name.js'
import type { HeldVms } from './held-vms.js'
import type { LeaseEntry, LeaseKind } from './lease-store.js'
import { claimIdle, evictOverMax, isExpired, markIdle, markLeased, pickIdleToAdopt, releaseOwnership, replaceRecord, reserveName } from './lease-table.js'
import { isSameOwner } from './owner-liveness.js'
import { ParkedVms } from './parked-vms.js'
import { RESET_TO_SNAPSHOT, type ResolvedPoolOptions } from './pool-options.js'
import type { PoolLeases, PoolLedger } from './pool-leases.js'
import { getSpecHash, type PoolVmSpec } from './spec-hash.js'
import { checkConnected, connectAndCheck } from './vm-health-check.js'

/** An idle VM must answer `true` within this before it is adopted; otherwise it is deleted and replaced. Scaled. */
export const ADOPT_CHECK_TIMEOUT_MS = 15_000
/** The `keepWarm.reset` command before a VM goes back to idle; a reset that fails or runs out deletes the VM instead. Scaled. */
export const RESET_TIMEOUT_MS = 60_000
export { PARKED_CONNECTION_TTL_MS, PARKED_GRACE_MS } from './parked-vms.js'

const debug = createDebug('vm-pool:pool')

const NAME_TAKEN_HINT = 'choose another name, or delete that VM first (`vm-pool rm NAME`)'

/** A VM this pool holds, connected in this process. */
export interface Held {
  name: string
  vm: Vm
  kind: LeaseKind
  adopted: boolean
}

/**
 * How a pool gets VMs and gives them back, each step a lease-table transition under the lock with the slow
 * part (boot, health check, reset, delete) outside it: adopt an idle VM or reserve a name and boot; hand
 * back as idle (after `keepWarm.reset`) or delete.
 */
export class PoolVmLifecycle {
  readonly #config: ResolvedPoolOptions
  readonly #leases: PoolLeases
  readonly #held: HeldVms
  readonly #ledger: PoolLedger
  readonly #warn: (message: string) => void
  readonly #parked: ParkedVms

  constructor(options: { config: ResolvedPoolOptions; leases: PoolLeases; held: HeldVms; ledger: PoolLedger; warn: (message: string) => void }) {
    this.#config = options.config
    this.#leases = options.leases
    this.#held = options.held
    this.#ledger = options.ledger
    this.#warn = options.warn
    this.#parked = new ParkedVms(options.held)
  }

  /** An idle warm VM with our spec (claimed, then checked), else a new one named `name` or `<prefix>-<runId>-<key>`. */
  async obtain(key: string, name?: string): Promise<Held> {
    await this.#held.ensureReaper()
    const shortcut = await this.#claimParked(key)
    if (shortcut.held) {
      this.#ledger.counters.reused++
      return shortcut.held
    }
    let uncertain = shortcut.uncertain
    let waited = false
    const want = { provider: this.#config.provider.name, specHash: this.#config.specHash, key }
    for (;;) {
      const claim = await this.#leases.update((table, now, nextToken) => {
        // A swap that broke on the way may have claimed it for us: if so it is ours, and nobody else's.
        const ours = uncertain !== undefined ? table[uncertain] : undefined
        let graceLeftMs = Number.POSITIVE_INFINITY
        const rank = (candidate: LeaseEntry) => {
          const ranked = this.#parked.rank(candidate, now, this.#config.runId)
          if (typeof ranked === 'number') return ranked
          graceLeftMs = Math.min(graceLeftMs, ranked.graceLeftMs)
          return undefined
        }
        const entry = ours?.state === 'leased' && isSameOwner(ours.owner, this.#leases.actor.owner) && !this.#held.get(ours.name) ? ours : pickIdleToAdopt(table, want, now, rank)
        if (!entry) return Number.isFinite(graceLeftMs) && !waited ? { waitMs: graceLeftMs, entry: undefined } : undefined
        const idleSince = entry === ours ? this.#parked.entry(entry.name)?.idleSince : entry.idleSince
        return { entry: structuredClone(claimIdle(entry, key, this.#leases.actor, now, nextToken)), idleSince, waitMs: 0 }
      })
      uncertain = undefined
      if (claim && !claim.entry) {
        waited = true
        debug('only VMs other pools just handed back are idle; waiting %d ms (PARKED_GRACE_MS) before booting', claim.waitMs)
        await sleep(claim.waitMs)
        continue
      }
      if (!claim?.entry) break
      const { entry } = claim
      this.#held.note(entry)
      const parked = this.#parked.unpark(entry.name)
      // Untouched since we handed it back (same hand-back stamp): our connection is still the VM's.
      let held: Held | undefined
      if (parked && parked.entry.idleSince === claim.idleSince) held = await this.#checkKept(entry, parked.vm)
      else {
        await parked?.vm.close?.().catch(() => {})
        held = await this.#checkAdopted(entry)
      }
      if (held) {
        this.#ledger.counters.reused++
        return held
      }
    }
    if (name !== undefined) return this.create('slot', name, this.#config.spec, key, true)
    return this.create('slot', makeVmName(this.#config.prefix, this.#config.runId, key), this.#config.spec, key, false)
  }

  /**
   * The warm cycle's shortcut (docs/pool.md, "The warm cycle"): the VM this pool handed back last, claimed again
   * by one swap of its entry, if nobody touched the entry since. That is the VM the locked path would pick too
   * (`ParkedVms.rank` 2). Nothing held: take the locked path; `uncertain` names a VM a broken swap may have claimed.
   */
  async #claimParked(key: string): Promise<{ held?: Held; uncertain?: string }> {
    const last = this.#parked.last()
    if (!last) return {}
    const { result } = await this.#leases.trySwap(last, (entry, now) => (isExpired(entry, now) ? undefined : claimIdle(entry, key, this.#leases.actor, now)), {
      claim: true,
      then: (written) => this.#held.note(written),
    })
    if (result === 'declined') return {}
    if (result === 'unknown') return { uncertain: last.name }
    // The kept connection's timer may have run out meanwhile: then connect again, as for any adoption.
    const parked = this.#parked.unpark(last.name)
    const held = parked ? await this.#checkKept(result.written, parked.vm) : await this.#checkAdopted(result.written)
    return held ? { held } : {}
  }

  /**
   * Our own VM back on the connection we kept: no new connect. The check is the provider's `isRunning` where
   * it has one (no guest command), else `true` on the kept connection. A VM that fails it is deleted.
   */
  async #checkKept(entry: LeaseEntry, vm: Vm): Promise<Held | undefined> {
    const provider = this.#config.provider
    const check = provider.isRunning ? () => provider.isRunning!(entry.record!) : () => checkConnected(vm, provider.name, entry.name, { name: 'ADOPT_CHECK_TIMEOUT_MS', ms: scaleTimeout(ADOPT_CHECK_TIMEOUT_MS) })
    try {
      if (!(await check())) throw new Error('its provider says it no longer runs')
      debug('adopted idle VM %s on its kept connection', entry.name)
      return { name: entry.name, vm, kind: 'slot', adopted: true }
    } catch (error) {
      await vm.close?.().catch(() => {})
      return this.#failedCheck(entry, error)
    }
  }

  /** A VM that fails the check is deleted (and the caller tries the next one). */
  async #checkAdopted(entry: LeaseEntry): Promise<Held | undefined> {
    try {
      const vm = await connectAndCheck(this.#config.provider, entry.record!, { name: 'ADOPT_CHECK_TIMEOUT_MS', ms: scaleTimeout(ADOPT_CHECK_TIMEOUT_MS) })
      debug('adopted idle VM %s', entry.name)
      return { name: entry.name, vm, kind: 'slot', adopted: true }
    } catch (error) {
      return this.#failedCheck(entry, error)
    }
  }

  async #failedCheck(entry: LeaseEntry, error: unknown): Promise<undefined> {
    this.#warn(`idle VM ${entry.name} failed its check before adoption (${(error as Error).message}); deleting it and trying another`)
    await this.#leases.deleteByName(entry.name).catch(() => {})
    return undefined
  }

  /** Reserve the name (booting) under the lock, boot outside it, then mark it leased. */
  async create(kind: LeaseKind, base: string, spec: PoolVmSpec, key: string | undefined, exactName: boolean): Promise<Held> {
    await this.#held.ensureReaper()
    const provider = this.#config.provider
    const request = { base, exactName, provider: provider.name, specHash: getSpecHash(spec, provider), kind, ...(key !== undefined ? { key } : {}) }
    const reserved = await this.#leases.update((table, now, nextToken) => {
      const entry = reserveName(table, request, this.#leases.actor, now, nextToken?.())
      if (!entry) throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: provider.name, operation: kind, vm: base, message: `a VM named ${base} is already leased`, hint: NAME_TAKEN_HINT })
      return structuredClone(entry)
    })
    const name = reserved.name
    this.#held.note(reserved)
    // A fixed name may belong to a VM no lease knows (kept with keep() or --keep-vm, made by hand): the
    // provider's create would fail on it and the cleanup below would delete it. Refuse before touching it.
    if (exactName) await this.#refuseExisting(name, kind)
    let record: VmRecord
    try {
      record = await provider.create({ ...spec, name })
    } catch (error) {
      // The provider may have half-made it: delete is idempotent.
      await this.#leases.deleteByName(name, false).catch(() => {})
      if (isVmPoolError(error)) throw error
      throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: provider.name, operation: 'create', vm: name, message: `could not create ${name}: ${(error as Error).message}`, cause: error })
    }
    this.#ledger.counters.created++
    const entry = await this.#leases.update((table, now) => structuredClone(markLeased(table, reserved, record, this.#leases.actor, now)))
    this.#held.note(entry)
    try {
      const vm = await provider.connect(record)
      return { name, vm, kind, adopted: false }
    } catch (error) {
      await this.#leases.deleteByName(name).catch(() => {})
      throw error
    }
  }

  /** The name is reserved (ours); if the provider already lists a VM by it, drop the reservation only and refuse. */
  async #refuseExisting(name: string, kind: LeaseKind): Promise<void> {
    const provider = this.#config.provider
    let exists: boolean
    try {
      exists = (await provider.list()).some((info) => info.name === name)
    } catch (error) {
      await this.#dropReservation(name)
      throw error
    }
    if (!exists) return
    await this.#dropReservation(name)
    throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: provider.name, operation: kind, vm: name, message: `a VM named ${name} already exists (no lease holds it); it was left as it is`, hint: NAME_TAKEN_HINT })
  }

  async #dropReservation(name: string): Promise<void> {
    await this.#leases.update((table) => {
      releaseOwnership(table, name, this.#leases.actor)
      this.#held.forget(name)
    })
  }

  /** The last holder released: idle again (keepWarm, after `reset`) or deleted. */
  async giveBack(held: Held, discard: boolean): Promise<void> {
    // Fencing: a VM another process reclaimed from us is not ours to reset, keep warm or delete.
    try {
      await this.#leases.assertHeld(held.name)
    } catch (error) {
      if (!isVmPoolError(error, 'VMPOOL_LEASE_LOST')) throw error
      await held.vm.close?.().catch(() => {})
      this.#warn(`${error.shortMessage}; releasing nothing`)
      return
    }
    const keepWarm = this.#config.keepWarm
    if (!keepWarm || discard || keepWarm.max === 0) return this.deleteHeld(held)
    let record: VmRecord | undefined
    if (keepWarm.reset === RESET_TO_SNAPSHOT) {
      // No outer timeout: the provider's restore has its own named ones, and abandoning a restore
      // half-way would race the delete below against it.
      await held.vm.close?.().catch(() => {})
      try {
        record = await this.#config.provider.reset!(held.name)
      } catch (error) {
        this.#warn(`resetting ${held.name} to its snapshot failed (${(error as Error).message.split('\n')[0]}); deleting it instead of keeping it warm`)
        return this.deleteHeld(held)
      }
    } else if (keepWarm.reset) {
      const timeoutMs = scaleTimeout(RESET_TIMEOUT_MS)
      try {
        const result = await withTimeout(held.vm.exec(keepWarm.reset, { timeoutMs }), { name: 'RESET_TIMEOUT_MS', ms: timeoutMs, what: `the keepWarm.reset command in ${held.name}`, provider: this.#config.provider.name, vm: held.name })
        if (result.exitCode !== 0) throw new Error(`exited with ${result.exitCode}${result.timedOut ? ' (timed out)' : ''}: ${result.stderr.trim().slice(0, 200)}`)
      } catch (error) {
        this.#warn(`keepWarm.reset failed in ${held.name} (${(error as Error).message}); deleting it instead of keeping it warm`)
        return this.deleteHeld(held)
      }
    }
    const idleOptions = { ttlMs: keepWarm.ttlMs, ...(record ? { record } : {}) }
    const actor = this.#leases.actor
    const mine = this.#held.get(held.name)
    // The shortcut: one swap of our entry (docs/pool.md, "The warm cycle"). When the shared sweep is due, this
    // hand-back runs it: the housekeeping of every update, and idle VMs over `max` evicted.
    const swapped = mine ? await this.#leases.trySwap(mine, (entry, now) => markIdle({ [entry.name]: entry }, entry.name, actor, idleOptions, now), { sweep: true, then: () => this.#held.forget(held.name, true) }) : undefined
    let outcome: { idle: LeaseEntry; evicted: string[] } | undefined
    if (typeof swapped?.result === 'object') {
      const evicted = swapped.result.sweepDue ? await this.#leases.update((table, now) => evictOverMax(table, this.#config.provider.name, keepWarm.max, actor, now)) : []
      outcome = { idle: swapped.result.written, evicted }
    }
    outcome ??= await this.#leases.update((table, now) => {
      // A swap that broke on the way may have written it already: then that is our hand-back.
      const sent = swapped?.result === 'unknown' ? swapped.next : undefined
      const idle = markIdle(table, held.name, actor, idleOptions, now) ?? (sent && table[held.name]?.state === 'idle' && table[held.name]!.idleSince === sent.idleSince ? table[held.name] : undefined)
      // Idle (nobody's) or reclaimed by someone else: either way no longer ours to put back.
      this.#held.forget(held.name)
      // Over `max`: the oldest idle VMs go (this one is the newest).
      return idle && { idle: structuredClone(idle), evicted: evictOverMax(table, this.#config.provider.name, keepWarm.max, actor, now) }
    })
    // After a snapshot reset the connection was closed above (the VM has a new record); an evicted VM is being deleted.
    if (outcome && record === undefined && !outcome.evicted.includes(held.name)) this.#parked.park(held.name, held.vm, outcome.idle)
    else {
      this.#held.unmark(held.name)
      await held.vm.close?.().catch(() => {})
    }
    if (!outcome) {
      // Someone reclaimed it while we held it (e.g. the lease file was rebuilt and gc ran): it is not ours to keep.
      this.#warn(`lost the lease of ${held.name} while holding it; not keeping it warm`)
      return
    }
    const { evicted } = outcome
    this.#ledger.counters.warmed++
    this.#ledger.drainLog.keptWarm.add(held.name)
    for (const name of evicted) await this.#leases.deleteByName(name).catch(() => {})
  }

  /** `VmLease.reset()`: the VM restored to the provider's saved state under its name; new record in the lease entry, new connection. */
  async resetHeld(held: Held): Promise<void> {
    const provider = this.#config.provider
    if (typeof provider.reset !== 'function') {
      throw invalidOptions(`${provider.name} cannot reset a VM to a snapshot`, { operation: 'reset', provider: provider.name, vm: held.name, hint: 'use the qemu provider with snapshots on (its default), or reset with a shell line' })
    }
    await held.vm.close?.().catch(() => {})
    const record = await provider.reset(held.name)
    const entry = await this.#leases.update((table, now) => {
      const updated = replaceRecord(table, held.name, record, this.#leases.actor, now)
      return updated && structuredClone(updated)
    })
    if (entry) this.#held.note(entry)
    held.vm = await provider.connect(record)
  }

  /** Close the kept connections (drain). */
  async closeParked(): Promise<void> {
    await this.#parked.closeAll()
  }

  async deleteHeld(held: Held): Promise<void> {
    await held.vm.close?.().catch(() => {})
    await this.#leases.deleteByName(held.name)
  }
}
