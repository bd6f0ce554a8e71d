import { z } from 'zod'
import { VmPoolError, invalidOptions, isVmPoolError } from '../errors.js'
import { formatZodError } from '../config/zod-error.js'
import { getProviderNames } from '../providers/provider-registry.js'
import type { JsonValue, Vm, VmProvider, VmRecord } from '../providers/vm-provider.js'
import { createDebug } from '../util/debug.js'
import { getCurrentProcessIdentity, isProcessAlive, type ProcessIdentity } from '../util/process-info.js'
import { getStateDir } from '../util/state-dir.js'
import { scaleTimeout, withTimeout } from '../util/timeouts.js'
import { validateVmName } from '../util/vm-name.js'
import { FileLeaseStore } from './file-lease-store.js'
import { isSameOwner, type LeaseEntry, type LeaseKind, type LeaseStore, type LeaseTable } from './lease-store.js'
import { generateRunId, getFreshPrefix, makeVmName, normalizeLeaseKey, validatePrefix, validateRunId, WORKER_PREFIX } from './naming.js'
import { ReaperHandle } from './reaper.js'
import { getSpecHash, type PoolVmSpec } from './spec-hash.js'
import { vmSpecSchema } from '../config/vm-spec-schema.js'
import { delegateVmOperations } from '../providers/delegate-vm.js'

/** An idle VM must answer `true` within this before it is adopted; otherwise it is deleted and replaced. Scaled. */
export const ADOPT_CHECK_TIMEOUT_MS = 15_000
/** The `keepWarm.reset` command before a VM goes back to idle; a reset that fails or runs out deletes the VM instead. Scaled. */
export const RESET_TIMEOUT_MS = 60_000
/** `keepWarm.reset` value that restores the VM to the provider's snapshot (`provider.reset`) instead of running a shell line. */
export const RESET_TO_SNAPSHOT = 'snapshot'

const debug = createDebug('vm-pool:pool')

const isProvider = (value: unknown): value is VmProvider =>
  typeof value === 'object' && value !== null && ['create', 'connect', 'delete', 'list'].every((method) => typeof (value as Record<string, unknown>)[method] === 'function') && typeof (value as VmProvider).name === 'string'


const keepWarmSchema = z
  .object({
    /** An idle VM older than this is deleted by the next pool operation on this host or by `vm-pool gc`. */
    ttlMs: z.number().int().positive(),
    /** At most this many idle VMs on this host (for this provider); the oldest go first. */
    max: z.number().int().min(0),
    /**
     * Before a VM goes back to idle: a shell line run in it (e.g. `rm -rf /tmp/test-*`), or `'snapshot'`
     * to restore it to the provider's saved clean state (needs `provider.reset`, e.g. qemu with snapshots).
     */
    reset: z.string().min(1).optional(),
  })
  .strict()

const reaperSchema = z.union([
  z.boolean(),
  z
    .object({
      /** A name `createProvider` knows (`qemu`, `fake`, ...). */
      providerName: z.string().min(1),
      /** Serializable options for `createProvider(providerName, providerOptions)`. Passed in the environment, never argv. */
      providerOptions: z.record(z.string(), z.json()).default({}),
    })
    .strict(),
])

export const poolOptionsSchema = z
  .object({
    provider: z.custom<VmProvider>(isProvider, { error: 'expected a VmProvider (an object with name, create, connect, delete and list)' }),
    prefix: z.string().default(WORKER_PREFIX),
    freshPrefix: z.string().optional(),
    keepWarm: keepWarmSchema.optional(),
    stateDir: z.string().min(1).optional(),
    reaper: reaperSchema.default(true),
    runId: z.string().optional(),
    spec: vmSpecSchema.default({}),
    warn: z.custom<(message: string) => void>((value) => typeof value === 'function', { error: 'expected a function' }).optional(),
  })
  .strict()

export interface PoolOptions {
  provider: VmProvider
  /** Names of `acquire` VMs: `<prefix>-<runId>-<key>`. @default 'vitest-worker' */
  prefix?: string
  /** Names of `fresh()` VMs: `<freshPrefix>-<runId>-<n>`. @default 'vitest-fresh' for the default prefix, else `prefix` */
  freshPrefix?: string
  /**
   * Keep released VMs running as idle warm VMs any process on this host can adopt. `reset` runs before a
   * VM goes idle: a shell line, or `'snapshot'` to restore the VM to the provider's snapshot (`provider.reset`).
   * @default undefined (release deletes)
   */
  keepWarm?: { ttlMs: number; max: number; reset?: string }
  /** Where the lease file (`leases/<provider>.json`) and reaper markers live. @default `VM_POOL_STATE_DIR` or `~/.cache/vm-pool` */
  stateDir?: string
  /**
   * A detached watchdog deletes this process's leased and fresh VMs if it dies without `drain()`.
   * It recreates the provider with `createProvider(providerName, providerOptions)`: `true` means
   * `{ providerName: provider.name, providerOptions: {} }` (with `VM_POOL_STATE_DIR` set to `stateDir` when given).
   * Pass the object when the provider was made with options. `false`: no watchdog (only `vm-pool gc` cleans up).
   * @default true
   */
  reaper?: boolean | { providerName: string; providerOptions?: Record<string, JsonValue> }
  /** Identifies this run in VM names and leases. @default 8 random base-36 characters */
  runId?: string
  /** What every VM of this pool looks like (the name is chosen by the pool). Idle VMs are adopted only with an equal spec. @default {} */
  spec?: PoolVmSpec
  /** Where warnings go (a corrupt lease file, an idle VM that failed its check). @default a line on stderr */
  warn?: (message: string) => void
}

export interface ResolvedPoolOptions {
  readonly provider: VmProvider
  readonly prefix: string
  readonly freshPrefix: string
  readonly keepWarm: Readonly<{ ttlMs: number; max: number; reset?: string }> | undefined
  readonly stateDir: string
  /** `env`: extra environment of the watchdog (`VM_POOL_STATE_DIR` when derived from `reaper: true` with a `stateDir`). */
  readonly reaper: Readonly<{ providerName: string; providerOptions: Record<string, JsonValue>; env: Readonly<Record<string, string>> }> | false
  readonly runId: string
  readonly spec: Readonly<PoolVmSpec>
  readonly specHash: string
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

export interface ReleaseOptions {
  /** Delete the VM even with keepWarm (its state is unknown, e.g. its Vitest worker crashed). @default false */
  discard?: boolean
}

export interface VmLease extends AsyncDisposable {
  /** Connected in this process. Hand `vm.record` to another process to reach the same VM there. */
  readonly vm: Vm
  readonly name: string
  readonly key: string
  /** True when the VM was an idle warm VM (booted by an earlier run or `vm-pool warm`). */
  readonly adopted: boolean
  /** Give it back: idle (keepWarm) or deleted, once the last holder of this key released it. Idempotent. */
  release(options?: ReleaseOptions): Promise<void>
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
  /** The VM for `key`: the same one while held; adopts an idle warm VM with the same spec, else boots one. */
  acquire(key: string | number): Promise<VmLease>
  /** A new VM that is always deleted. `spec` is merged over the pool's; a `name` is used as is (it must be free). */
  fresh(spec?: PoolVmSpec & { name?: string }): Promise<FreshVm>
  /** Hand back every lease (idle with keepWarm, else deleted), delete fresh VMs, stop the watchdog. The pool is closed afterwards. */
  drain(): Promise<DrainResult>
}

interface Held {
  name: string
  vm: Vm
  kind: LeaseKind
  adopted: boolean
}

interface Slot {
  refs: number
  promise: Promise<Held>
}

/**
 * A pool of VMs shared across processes on this host through a lease store. See docs/pool.md.
 *
 * Ordering rules that keep "never two holders, never a leak" true across processes:
 * a name is reserved (`booting`, owner = this process) under the lock BEFORE the VM is created, so any VM
 * a provider lists has a lease entry or is not ours; an idle VM is claimed (`leased`) under the lock before
 * anyone execs in it; deletes are announced (`deleting`) under the lock and run outside it.
 */
export function createPool(options: PoolOptions): VmPool {
  const parsed = poolOptionsSchema.safeParse(options)
  if (!parsed.success) throw invalidOptions(`invalid createPool options: ${formatZodError(parsed.error, options)}`, { operation: 'createPool' })
  const raw = parsed.data
  const provider = raw.provider
  const prefix = validatePrefix(raw.prefix)
  const freshPrefix = validatePrefix(raw.freshPrefix ?? getFreshPrefix(prefix))
  const runId = validateRunId(raw.runId ?? generateRunId())
  const stateDir = getStateDir(raw.stateDir)
  let reaper: ResolvedPoolOptions['reaper'] = false
  if (raw.reaper === true) {
    if (!getProviderNames().includes(provider.name)) {
      throw invalidOptions(`the reaper cannot recreate provider ${JSON.stringify(provider.name)}: createProvider does not know it`, {
        operation: 'createPool',
        hint: 'pass reaper: { providerName, providerOptions } naming a registered provider, or reaper: false',
      })
    }
    // The watchdog's provider finds its VMs through the state dir: the pool's, when one was given.
    reaper = Object.freeze({ providerName: provider.name, providerOptions: {}, env: raw.stateDir ? { VM_POOL_STATE_DIR: stateDir } : ({} as Record<string, string>) })
  } else if (raw.reaper !== false) {
    reaper = Object.freeze({ providerName: raw.reaper.providerName, providerOptions: raw.reaper.providerOptions, env: {} })
  }
  if (raw.keepWarm?.reset === RESET_TO_SNAPSHOT && typeof provider.reset !== 'function') {
    throw invalidOptions(`keepWarm.reset: '${RESET_TO_SNAPSHOT}' needs a provider that can reset a VM to a snapshot; ${provider.name} cannot`, {
      operation: 'createPool',
      hint: "use the qemu provider with snapshots on (its default), or a shell line as keepWarm.reset",
    })
  }
  const spec = Object.freeze({ ...raw.spec })
  const config: ResolvedPoolOptions = Object.freeze({
    provider,
    prefix,
    freshPrefix,
    keepWarm: raw.keepWarm ? Object.freeze({ ...raw.keepWarm }) : undefined,
    stateDir,
    reaper,
    runId,
    spec,
    specHash: getSpecHash(spec),
  })
  const warn = raw.warn ?? ((message: string) => process.stderr.write(`[vm-pool] warning: ${message}\n`))
  return new LeasedVmPool(config, new FileLeaseStore({ provider, stateDir, warn }), warn)
}

class LeasedVmPool implements VmPool {
  readonly runId: string
  readonly options: ResolvedPoolOptions
  readonly store: LeaseStore
  readonly #counters: PoolStats = { created: 0, reused: 0, deleted: 0, warmed: 0, leaked: 0 }
  readonly stats: Readonly<PoolStats>
  readonly #warn: (message: string) => void
  readonly #provider: VmProvider
  readonly #me: ProcessIdentity = getCurrentProcessIdentity()
  readonly #slots = new Map<string, Slot>()
  readonly #fresh = new Map<string, Held>()
  /** Our copy of every entry we hold, to re-register after the lease file was rebuilt. */
  readonly #held = new Map<string, LeaseEntry>()
  readonly #pending = new Set<Promise<unknown>>()
  readonly #background = new Set<Promise<unknown>>()
  #reaper: Promise<ReaperHandle | undefined> | undefined
  #reaperHandle: ReaperHandle | undefined
  #freshCount = 0
  #closed = false
  #draining: Promise<DrainResult> | undefined
  readonly #drainLog = { keptWarm: new Set<string>(), deleted: new Set<string>(), leaked: new Set<string>() }

  constructor(options: ResolvedPoolOptions, store: LeaseStore, warn: (message: string) => void) {
    this.options = options
    this.runId = options.runId
    this.store = store
    this.#warn = warn
    this.#provider = options.provider
    // A live view: the same object is updated in place, so a reporter can keep a reference.
    this.stats = this.#counters
  }

  get reaperPid(): number | undefined {
    return this.#reaperHandle?.pid
  }

  async acquire(key: string | number): Promise<VmLease> {
    this.#assertOpen('acquire')
    const k = normalizeLeaseKey(key)
    let slot = this.#slots.get(k)
    if (slot) {
      slot.refs++
      this.#counters.reused++
    } else {
      slot = { refs: 1, promise: this.#track(this.#obtain(k)) }
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
    return this.#makeLease(k, slot, held)
  }

  async fresh(overrides: PoolVmSpec & { name?: string } = {}): Promise<FreshVm> {
    this.#assertOpen('fresh')
    const { name: fixedName, ...rest } = overrides
    const parsedSpec = vmSpecSchema.safeParse(rest)
    if (!parsedSpec.success) throw invalidOptions(`invalid fresh() spec: ${formatZodError(parsedSpec.error, rest)}`, { operation: 'fresh', provider: this.#provider.name })
    const spec = { ...this.options.spec, ...parsedSpec.data }
    const base = fixedName === undefined ? makeVmName(this.options.freshPrefix, this.runId, String(++this.#freshCount)) : validateVmName(fixedName, this.#provider.name)
    const held = await this.#track(this.#create('fresh', base, spec, undefined, fixedName !== undefined))
    if (this.#closed) {
      // drain() started while we booted. Tracked, so drain() waits for this delete before it resolves
      // (it re-checks #pending after this continuation has run).
      await this.#track(this.#deleteHeld(held)).catch(() => {})
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
      work.push(slot.promise.then((held) => this.#giveBack(held, false)))
    }
    for (const held of this.#fresh.values()) work.push(this.#deleteHeld(held))
    this.#fresh.clear()
    await Promise.allSettled(work)
    while (this.#background.size > 0) await Promise.allSettled([...this.#background])
    const reaper = await this.#reaper?.catch(() => undefined)
    // With a leak left, the watchdog stays: when this process exits it retries those deletes.
    if (reaper && this.#held.size === 0) await reaper.stop()
    await this.#provider.close?.().catch(() => {})
    const result = { keptWarm: [...this.#drainLog.keptWarm], deleted: [...this.#drainLog.deleted], leaked: [...this.#drainLog.leaked] }
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
    let released = false
    const release = async (options: ReleaseOptions = {}) => {
      if (released) return
      released = true
      slot.refs--
      if (slot.refs > 0 || this.#slots.get(key) !== slot) return
      this.#slots.delete(key)
      await this.#giveBack(held, options.discard === true)
    }
    return {
      vm: held.vm,
      name: held.name,
      key,
      adopted: held.adopted,
      release,
      [Symbol.asyncDispose]: () => release(),
    }
  }

  #makeFreshVm(held: Held): FreshVm {
    const { vm } = held
    let done: Promise<void> | undefined
    const remove = () => {
      done ??= (async () => {
        if (!this.#fresh.delete(held.name)) return
        await this.#deleteHeld(held)
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
        await this.store.update((table) => {
          if (isSameOwner(table[held.name]?.owner ?? null, this.#me)) delete table[held.name]
        })
        this.#forget(held.name)
      },
      [Symbol.asyncDispose]: remove,
    }
    return fresh
  }

  /** An idle warm VM with our spec, else a new one. */
  async #obtain(key: string): Promise<Held> {
    await this.#ensureReaper()
    for (;;) {
      const entry = await this.#update((table, now) => {
        let best: LeaseEntry | undefined
        for (const candidate of Object.values(table)) {
          if (candidate.state !== 'idle' || candidate.provider !== this.#provider.name || candidate.specHash !== this.options.specHash || !candidate.record) continue
          if (candidate.expiresAt && Date.parse(candidate.expiresAt) <= now) continue
          // The most recently idle one: the furthest from its ttl.
          if (!best || (candidate.idleSince ?? '') > (best.idleSince ?? '')) best = candidate
        }
        if (!best) return undefined
        this.#claim(best, key, now)
        return structuredClone(best)
      })
      if (!entry) break
      await this.#noteHeld(entry)
      const held = await this.#checkAdopted(entry)
      if (held) {
        this.#counters.reused++
        return held
      }
    }
    return this.#create('slot', makeVmName(this.options.prefix, this.runId, key), this.options.spec, key, false)
  }

  /** Connect to a claimed idle VM and run `true`; a VM that fails is deleted (and the caller tries the next one). */
  async #checkAdopted(entry: LeaseEntry): Promise<Held | undefined> {
    const timeoutMs = scaleTimeout(ADOPT_CHECK_TIMEOUT_MS)
    let vm: Vm | undefined
    try {
      vm = await this.#provider.connect(entry.record!)
      const result = await withTimeout(vm.exec('true', { timeoutMs }), { name: 'ADOPT_CHECK_TIMEOUT_MS', ms: timeoutMs, what: `idle VM ${entry.name} to run \`true\``, provider: this.#provider.name, vm: entry.name })
      if (result.exitCode !== 0) throw new Error(`\`true\` exited with ${result.exitCode}${result.timedOut ? ' (timed out)' : ''}`)
      debug('adopted idle VM %s', entry.name)
      return { name: entry.name, vm, kind: 'slot', adopted: true }
    } catch (error) {
      this.#warn(`idle VM ${entry.name} failed its check before adoption (${(error as Error).message}); deleting it and trying another`)
      await vm?.close?.().catch(() => {})
      await this.#deleteByName(entry.name).catch(() => {})
      return undefined
    }
  }

  async #create(kind: LeaseKind, base: string, spec: PoolVmSpec, key: string | undefined, exactName: boolean): Promise<Held> {
    await this.#ensureReaper()
    const specHash = getSpecHash(spec)
    const reserved = await this.#update((table, now) => {
      let name = base
      if (table[name]) {
        if (exactName) throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: this.#provider.name, operation: kind, vm: name, message: `a VM named ${name} is already leased` })
        // `<prefix>-<runId>-<key>` is taken when another process adopted the VM this key once had: suffix it.
        for (let n = 2; table[name]; n++) name = validateVmName(`${base}-${n}`, this.#provider.name)
      }
      const at = new Date(now).toISOString()
      const entry: LeaseEntry = { name, provider: this.#provider.name, specHash, kind, state: 'booting', owner: this.#me, runId: this.runId, createdAt: at, updatedAt: at }
      if (key !== undefined) entry.key = key
      table[name] = entry
      return structuredClone(entry)
    })
    const name = reserved.name
    await this.#noteHeld(reserved)
    let record: VmRecord
    try {
      record = await this.#provider.create({ ...spec, name })
    } catch (error) {
      // The provider may have half-made it: delete is idempotent.
      await this.#deleteByName(name, false).catch(() => {})
      if (isVmPoolError(error)) throw error
      throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: this.#provider.name, operation: 'create', vm: name, message: `could not create ${name}: ${(error as Error).message}`, cause: error })
    }
    this.#counters.created++
    const entry = await this.#update((table, now) => {
      const current = table[name] ?? this.#held.get(name)!
      current.state = 'leased'
      current.owner = this.#me
      current.record = record
      current.updatedAt = new Date(now).toISOString()
      delete current.recoveredAt
      table[name] = current
      return structuredClone(current)
    })
    this.#held.set(name, entry)
    try {
      const vm = await this.#provider.connect(record)
      return { name, vm, kind, adopted: false }
    } catch (error) {
      await this.#deleteByName(name).catch(() => {})
      throw error
    }
  }

  /** The last holder released: idle again (keepWarm, after `reset`) or deleted. */
  async #giveBack(held: Held, discard: boolean): Promise<void> {
    const keepWarm = this.options.keepWarm
    if (!keepWarm || discard || keepWarm.max === 0) return this.#deleteHeld(held)
    let record: VmRecord | undefined
    if (keepWarm.reset === RESET_TO_SNAPSHOT) {
      // No outer timeout: the provider's restore has its own named ones, and abandoning a restore
      // half-way would race the delete below against it.
      await held.vm.close?.().catch(() => {})
      try {
        record = await this.#provider.reset!(held.name)
      } catch (error) {
        this.#warn(`resetting ${held.name} to its snapshot failed (${(error as Error).message.split('\n')[0]}); deleting it instead of keeping it warm`)
        return this.#deleteHeld(held)
      }
    } else if (keepWarm.reset) {
      const timeoutMs = scaleTimeout(RESET_TIMEOUT_MS)
      try {
        const result = await withTimeout(held.vm.exec(keepWarm.reset, { timeoutMs }), { name: 'RESET_TIMEOUT_MS', ms: timeoutMs, what: `the keepWarm.reset command in ${held.name}`, provider: this.#provider.name, vm: held.name })
        if (result.exitCode !== 0) throw new Error(`exited with ${result.exitCode}${result.timedOut ? ' (timed out)' : ''}: ${result.stderr.trim().slice(0, 200)}`)
      } catch (error) {
        this.#warn(`keepWarm.reset failed in ${held.name} (${(error as Error).message}); deleting it instead of keeping it warm`)
        return this.#deleteHeld(held)
      }
    }
    await held.vm.close?.().catch(() => {})
    const evicted = await this.#update((table, now) => {
      const entry = table[held.name]
      if (!entry || !isSameOwner(entry.owner, this.#me)) return undefined
      const at = new Date(now).toISOString()
      entry.state = 'idle'
      entry.owner = null
      if (record) entry.record = record
      entry.runId = this.runId
      delete entry.key
      entry.idleSince = at
      entry.expiresAt = new Date(now + keepWarm.ttlMs).toISOString()
      entry.updatedAt = at
      // Over `max`: the oldest idle VMs go (this one is the newest).
      const idle = Object.values(table)
        .filter((candidate) => candidate.state === 'idle' && candidate.provider === this.#provider.name)
        .sort((a, b) => ((a.idleSince ?? '') < (b.idleSince ?? '') ? 1 : -1))
      const over = idle.slice(keepWarm.max)
      for (const candidate of over) this.#markDeleting(candidate, now)
      return over.map((candidate) => candidate.name)
    })
    if (evicted === undefined) {
      // Someone reclaimed it while we held it (e.g. the lease file was rebuilt and gc ran): it is not ours to keep.
      this.#warn(`lost the lease of ${held.name} while holding it; not keeping it warm`)
      this.#forget(held.name)
      return
    }
    this.#forget(held.name)
    this.#counters.warmed++
    this.#drainLog.keptWarm.add(held.name)
    for (const name of evicted) await this.#deleteByName(name).catch(() => {})
  }

  async #deleteHeld(held: Held): Promise<void> {
    await held.vm.close?.().catch(() => {})
    await this.#deleteByName(held.name)
  }

  /** Announce (`deleting`), delete outside the lock, then drop the entry. A failure leaves the entry `deleting` and counts as leaked. */
  async #deleteByName(name: string, count = true): Promise<void> {
    await this.#update((table, now) => {
      const entry = table[name]
      if (entry) this.#markDeleting(entry, now)
    })
    try {
      await this.#provider.delete(name)
    } catch (error) {
      this.#counters.leaked++
      this.#drainLog.leaked.add(name)
      throw error
    }
    this.#drainLog.keptWarm.delete(name)
    if (count) {
      this.#counters.deleted++
      this.#drainLog.deleted.add(name)
    }
    await this.#update((table) => {
      if (table[name]?.state === 'deleting' && isSameOwner(table[name].owner, this.#me)) delete table[name]
    })
    this.#forget(name)
  }

  #claim(entry: LeaseEntry, key: string, now: number): void {
    entry.state = 'leased'
    entry.owner = this.#me
    entry.runId = this.runId
    entry.key = key
    entry.updatedAt = new Date(now).toISOString()
    delete entry.idleSince
    delete entry.expiresAt
    delete entry.recoveredAt
  }

  #markDeleting(entry: LeaseEntry, now: number): void {
    entry.state = 'deleting'
    entry.owner = this.#me
    entry.updatedAt = new Date(now).toISOString()
    delete entry.expiresAt
  }

  /**
   * Every update also does the host's housekeeping, so warm VMs stay bounded without a daemon:
   * idle VMs past their ttl and VMs whose holder died are claimed for deletion (deleted in the background),
   * and our own entries are re-registered if the lease file was rebuilt.
   */
  async #update<T>(mutate: (table: LeaseTable, now: number) => T): Promise<T> {
    const { result, evict } = await this.store.update((table) => {
      const now = Date.now()
      for (const [name, mine] of this.#held) {
        const entry = table[name]
        if (!entry || (entry.owner === null && entry.recoveredAt !== undefined)) table[name] = structuredClone(mine)
      }
      const evict: string[] = []
      for (const entry of Object.values(table)) {
        if (entry.provider !== this.#provider.name) continue
        const expired = entry.state === 'idle' && entry.expiresAt !== undefined && Date.parse(entry.expiresAt) <= now
        const orphaned = entry.state !== 'idle' && entry.owner !== null && !isProcessAlive(entry.owner)
        if (expired || orphaned) {
          this.#markDeleting(entry, now)
          evict.push(entry.name)
        }
      }
      return { result: mutate(table, now), evict }
    })
    for (const name of evict) {
      debug('evicting %s (idle past its ttl, or its holder died)', name)
      const job = this.#deleteByName(name).catch((error: unknown) => this.#warn(`could not delete ${name}: ${(error as Error).message}`))
      this.#background.add(job)
      void job.finally(() => this.#background.delete(job))
    }
    return result
  }

  async #noteHeld(entry: LeaseEntry): Promise<void> {
    this.#held.set(entry.name, structuredClone(entry))
    await this.#reaperHandle?.setHeld(this.#held.keys())
  }

  #forget(name: string): void {
    if (!this.#held.delete(name)) return
    void this.#reaperHandle?.setHeld(this.#held.keys()).catch((error: unknown) => debug('reaper marker write failed: %s', (error as Error).message))
  }

  /** The watchdog is started before the first VM is reserved, so no window exists where a VM is ours and unwatched. */
  #ensureReaper(): Promise<ReaperHandle | undefined> {
    const reaper = this.options.reaper
    if (!reaper) return Promise.resolve(undefined)
    this.#reaper ??= ReaperHandle.start({ runId: this.runId, providerName: reaper.providerName, providerOptions: reaper.providerOptions, stateDir: this.options.stateDir, env: reaper.env }).then((handle) => {
      this.#reaperHandle = handle
      return handle
    })
    const started = this.#reaper
    // A failed start is retried by the next acquire.
    started.catch(() => {
      if (this.#reaper === started) this.#reaper = undefined
    })
    return started
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
