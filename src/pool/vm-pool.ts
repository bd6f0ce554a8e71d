import { VmPoolError, invalidOptions } from '../errors.js'
import { formatZodError } from '../config/zod-error.js'
import { vmSpecSchema } from '../config/vm-spec-schema.js'
import { delegateVmOperations } from '../providers/delegate-vm.js'
import type { Vm, VmProvider } from '../providers/vm-provider.js'
import { makeVmName, normalizeLeaseKey, validateExplicitName, validateVmName } from '../util/vm-name.js'
import { fenceVm } from './fenced-vm.js'
import { HeldVms } from './held-vms.js'
import type { LeaseStore } from './lease-store.js'
import { releaseOwnership } from './lease-table.js'
import { openLeaseStore } from './lease-store-selection.js'
import { localProcessLiveness, rememberingLiveness } from './owner-liveness.js'
import { PostgresLeaseStore } from './postgres-lease-store.js'
import { resolvePoolOptions, type PoolOptions, type ResolvedPoolOptions } from './pool-options.js'
import { PoolLeases, type PoolLedger, type PoolStats } from './pool-leases.js'
import { PoolVmLifecycle, type Held } from './pool-vm-lifecycle.js'
import type { PoolVmSpec } from './spec-hash.js'

export { ADOPT_CHECK_TIMEOUT_MS, RESET_TIMEOUT_MS } from './pool-vm-lifecycle.js'
export { RESET_TO_SNAPSHOT, poolOptionsSchema, type PoolOptions, type ResolvedPoolOptions } from './pool-options.js'
export type { PoolStats } from './pool-leases.js'

export interface ReleaseOptions {
  /** Delete the VM even with keepWarm (its state is unknown, e.g. its Vitest worker crashed). @default false */
  discard?: boolean
}

export interface AcquireOptions {
  /**
   * The name of a VM booted for this key, instead of `<prefix>-<runId>-<key>` (e.g. the pytest plugin's
   * `pytest-worker-<pid>-<unix time>`). Reserved like any other name; a taken name fails with
   * `VMPOOL_CREATE_FAILED`. An adopted warm VM keeps the name it was booted with; a key already held
   * returns its VM whatever the name. A name carrying a pid and time must name a live process
   * (`validateExplicitName` in util/vm-name.ts). @default `<prefix>-<runId>-<key>`
   */
  name?: string
}

export interface VmLease extends AsyncDisposable {
  /** Connected in this process. Hand `vm.record` to another process to reach the same VM there. A new connection after `reset()`. */
  readonly vm: Vm
  readonly name: string
  readonly key: string
  /** True when the VM was an idle warm VM (booted by an earlier run or `vm-pool warm`). */
  readonly adopted: boolean
  /** Give it back: idle (keepWarm) or deleted, once the last holder of this key released it. Idempotent. */
  release(options?: ReleaseOptions): Promise<void>
  /**
   * Put the VM back to the provider's clean saved state (`provider.reset`, e.g. qemu's snapshot) and keep
   * holding it under the same name; `vm` is a new connection afterwards (the lease entry gets the new record).
   * A provider without `reset` fails with `VMPOOL_INVALID_OPTIONS`.
   */
  reset(): Promise<void>
}

/** A throwaway VM: deleted on dispose (`await using vm = await pool.fresh()`), on `drain()`, or by the reaper. */
export interface FreshVm extends Vm, AsyncDisposable {
  /** Same as `[Symbol.asyncDispose]`: delete the VM now. Idempotent. */
  delete(): Promise<void>
  /** Leave the VM running (debug mode): forget its lease; neither this pool nor the reaper deletes it. `vm-pool gc` still may. */
  keep(): Promise<void>
}

export interface DrainResult {
  /** VMs this pool handed back as idle warm VMs (each once). */
  keptWarm: string[]
  deleted: string[]
  /** VMs that could not be deleted (their leases stay `deleting`, the reaper or `vm-pool gc` retries). */
  leaked: string[]
}

export interface VmPool {
  readonly runId: string
  readonly options: ResolvedPoolOptions
  readonly stats: Readonly<PoolStats>
  readonly store: LeaseStore
  /** The watchdog's pid once one runs (after the first VM), for diagnostics. */
  readonly reaperPid: number | undefined
  /** The VM for `key`: the same one while held; adopts an idle warm VM with the same spec, else boots one (named `options.name` if given). */
  acquire(key: string | number, options?: AcquireOptions): Promise<VmLease>
  /** A new VM that is always deleted. `spec` is merged over the pool's; a `name` is used as is (it must be free). */
  fresh(spec?: PoolVmSpec & { name?: string }): Promise<FreshVm>
  /** Hand back every lease (idle with keepWarm, else deleted), delete fresh VMs, stop the watchdog. The pool is closed afterwards. */
  drain(): Promise<DrainResult>
}

/** The pool's housekeeping re-checks that a lease holder is alive at most this often (see `rememberingLiveness`). */
const HOUSEKEEPING_ALIVE_TTL_MS = 1_000

interface Slot {
  refs: number
  promise: Promise<Held>
}

/**
 * A pool of VMs shared across processes on this host through a lease store. See docs/pool.md, and
 * docs/architecture.md for where it sits. This file is the facade (keys, fresh VMs, drain); the lease
 * protocol is lease-table.ts, the VM steps pool-vm-lifecycle.ts, the lease updates pool-leases.ts.
 */
export function createPool(options: PoolOptions): VmPool {
  const { config: resolved, warn } = resolvePoolOptions(options)
  const { store, owned } = openLeaseStore(options.leaseStore, { provider: resolved.provider, stateDir: resolved.stateDir, warn })
  let config = resolved
  // The watchdog must reap from the same store: it opens it from its environment (VM_POOL_LEASE_STORE).
  if (store instanceof PostgresLeaseStore && resolved.reaper) {
    config = Object.freeze({ ...resolved, reaper: Object.freeze({ ...resolved.reaper, env: { ...resolved.reaper.env, ...store.childEnv() } }) })
  }
  return new LeasedVmPool(config, store, warn, owned)
}

class LeasedVmPool implements VmPool {
  readonly runId: string
  readonly options: ResolvedPoolOptions
  readonly store: LeaseStore
  readonly stats: Readonly<PoolStats>
  readonly #provider: VmProvider
  readonly #ledger: PoolLedger = { counters: { created: 0, reused: 0, deleted: 0, warmed: 0, leaked: 0 }, drainLog: { keptWarm: new Set(), deleted: new Set(), leaked: new Set() } }
  readonly #held: HeldVms
  readonly #leases: PoolLeases
  readonly #vms: PoolVmLifecycle
  readonly #slots = new Map<string, Slot>()
  readonly #fresh = new Map<string, Held>()
  readonly #pending = new Set<Promise<unknown>>()
  readonly #fencedVms = new WeakMap<Vm, Vm>()
  #freshCount = 0
  #closed = false
  #draining: Promise<DrainResult> | undefined
  readonly #ownsStore: boolean

  constructor(options: ResolvedPoolOptions, store: LeaseStore, warn: (message: string) => void, ownsStore: boolean) {
    this.#ownsStore = ownsStore
    this.options = options
    this.runId = options.runId
    this.store = store
    this.#provider = options.provider
    this.#held = new HeldVms(options)
    this.#leases = new PoolLeases({ store, provider: options.provider, runId: options.runId, held: this.#held, ledger: this.#ledger, liveness: rememberingLiveness(localProcessLiveness, HOUSEKEEPING_ALIVE_TTL_MS), warn })
    this.#vms = new PoolVmLifecycle({ config: options, leases: this.#leases, held: this.#held, ledger: this.#ledger, warn })
    // A live view: the same object is updated in place, so a reporter can keep a reference.
    this.stats = this.#ledger.counters
  }

  get reaperPid(): number | undefined {
    return this.#held.reaperPid
  }

  async acquire(key: string | number, options: AcquireOptions = {}): Promise<VmLease> {
    this.#assertOpen('acquire')
    const k = normalizeLeaseKey(key)
    const name = options.name === undefined ? undefined : validateExplicitName(options.name, this.#provider.name)
    let slot = this.#slots.get(k)
    if (slot) {
      slot.refs++
      this.#ledger.counters.reused++
    } else {
      slot = { refs: 1, promise: this.#track(this.#vms.obtain(k, name)) }
      this.#slots.set(k, slot)
      const created = slot
      created.promise.catch(() => {
        // A failed boot must not stick: the next acquire of this key tries again.
        if (this.#slots.get(k) === created) this.#slots.delete(k)
      })
    }
    const held = await slot.promise
    // drain() started while we booted: it hands this VM back; the caller must not use it.
    if (this.#closed) throw this.#closedError('acquire')
    // Fencing: never hand out a VM another process reclaimed from us.
    await this.#leases.assertHeld(held.name)
    return this.#makeLease(k, slot, held)
  }

  async fresh(overrides: PoolVmSpec & { name?: string } = {}): Promise<FreshVm> {
    this.#assertOpen('fresh')
    const { name: fixedName, ...rest } = overrides
    const parsedSpec = vmSpecSchema.safeParse(rest)
    if (!parsedSpec.success) throw invalidOptions(`invalid fresh() spec: ${formatZodError(parsedSpec.error, rest)}`, { operation: 'fresh', provider: this.#provider.name })
    const spec = { ...this.options.spec, ...parsedSpec.data }
    const base = fixedName === undefined ? makeVmName(this.options.freshPrefix, this.runId, String(++this.#freshCount)) : validateVmName(fixedName, this.#provider.name)
    const held = await this.#track(this.#vms.create('fresh', base, spec, undefined, fixedName !== undefined))
    if (this.#closed) {
      // drain() started while we booted. Tracked, so drain() waits for this delete before it resolves
      // (it re-checks #pending after this continuation has run).
      await this.#track(this.#vms.deleteHeld(held)).catch(() => {})
      throw this.#closedError('fresh')
    }
    this.#fresh.set(held.name, held)
    return this.#makeFreshVm(held)
  }

  drain(): Promise<DrainResult> {
    this.#closed = true
    this.#draining ??= this.#drain()
    return this.#draining
  }

  async #drain(): Promise<DrainResult> {
    // Acquires and boots already under way finish first; their VMs are then handed back like the rest.
    while (this.#pending.size > 0) await Promise.allSettled([...this.#pending])
    const work: Promise<unknown>[] = []
    for (const [key, slot] of this.#slots) {
      this.#slots.delete(key)
      work.push(slot.promise.then((held) => this.#vms.giveBack(held, false)))
    }
    for (const held of this.#fresh.values()) work.push(this.#vms.deleteHeld(held))
    this.#fresh.clear()
    await Promise.allSettled(work)
    await this.#leases.settleBackground()
    await this.#vms.closeParked()
    await this.#held.stopReaperIfEmpty()
    await this.#provider.close?.().catch(() => {})
    if (this.#ownsStore) await this.store.close?.()
    const { drainLog } = this.#ledger
    const result = { keptWarm: [...drainLog.keptWarm], deleted: [...drainLog.deleted], leaked: [...drainLog.leaked] }
    if (result.leaked.length > 0) {
      throw new VmPoolError({
        code: 'VMPOOL_DELETE_FAILED',
        provider: this.#provider.name,
        operation: 'drain',
        message: `could not delete ${result.leaked.length} VM(s): ${result.leaked.join(', ')}`,
        hint: `run \`vm-pool gc --provider ${this.#provider.name}\` once the provider works again`,
        details: { ...result },
      })
    }
    return result
  }

  #makeLease(key: string, slot: Slot, held: Held): VmLease {
    // The getter below runs with the lease as `this`; it needs the pool.
    const self = this
    let released = false
    const release = async (options: ReleaseOptions = {}) => {
      if (released) return
      released = true
      slot.refs--
      if (slot.refs > 0 || this.#slots.get(key) !== slot) return
      this.#slots.delete(key)
      await this.#vms.giveBack(held, options.discard === true)
    }
    return {
      // A getter: reset() replaces the connection of every lease on this key (the fenced Vm follows held.vm).
      get vm() {
        return self.#fenced(held)
      },
      name: held.name,
      key,
      adopted: held.adopted,
      release,
      reset: async () => {
        if (released) throw this.#closedError('reset')
        await this.#vms.resetHeld(held)
      },
      [Symbol.asyncDispose]: () => release(),
    }
  }

  #makeFreshVm(held: Held): FreshVm {
    const vm = this.#fenced(held)
    let done: Promise<void> | undefined
    const remove = () => {
      done ??= (async () => {
        if (!this.#fresh.delete(held.name)) return
        await this.#vms.deleteHeld(held)
      })()
      return done
    }
    const fresh: FreshVm = {
      name: vm.name,
      provider: vm.provider,
      record: vm.record,
      ...delegateVmOperations(vm),
      close: async () => vm.close?.(),
      delete: remove,
      keep: async () => {
        if (!this.#fresh.delete(held.name)) return
        await vm.close?.()
        await this.#leases.update((table) => {
          releaseOwnership(table, held.name, this.#leases.actor)
          this.#held.forget(held.name)
        })
      },
      [Symbol.asyncDispose]: remove,
    }
    return fresh
  }

  /** One fenced Vm per connection: every lease of a key gets the same object until `reset()` replaces the connection. */
  #fenced(held: Held): Vm {
    const inner = held.vm
    let vm = this.#fencedVms.get(inner)
    if (!vm) {
      vm = fenceVm(() => inner, () => this.#leases.assertHeld(held.name))
      this.#fencedVms.set(inner, vm)
    }
    return vm
  }

  #track<T>(promise: Promise<T>): Promise<T> {
    this.#pending.add(promise)
    void promise.then(
      () => this.#pending.delete(promise),
      () => this.#pending.delete(promise),
    )
    return promise
  }

  #assertOpen(operation: string): void {
    if (this.#closed) throw this.#closedError(operation)
  }

  #closedError(operation: string): VmPoolError {
    return new VmPoolError({ code: 'VMPOOL_POOL_CLOSED', provider: this.#provider.name, operation, message: `the pool of run ${this.runId} was drained; ${operation} is no longer possible`, hint: 'create a new pool with createPool()' })
  }
}
