import { z } from 'zod'
import { invalidOptions } from '../errors.js'
import { formatZodError } from '../config/zod-error.js'
import { vmSpecSchema } from '../config/vm-spec-schema.js'
import { getProviderNames } from '../providers/provider-registry.js'
import type { JsonValue, VmProvider } from '../providers/vm-provider.js'
import { getStateDir } from '../util/state-dir.js'
import { generateRunId, getFreshPrefix, validatePrefix, validateRunId, WORKER_PREFIX } from '../util/vm-name.js'
import type { LeaseStore } from './lease-store.js'
import { getSpecHash, type PoolVmSpec } from './spec-hash.js'

/** `keepWarm.reset` value that restores the VM to the provider's snapshot (`provider.reset`) instead of running a shell line. */
export const RESET_TO_SNAPSHOT = 'snapshot'

const isProvider = (value: unknown): value is VmProvider =>
  typeof value === 'object' && value !== null && ['create', 'connect', 'delete', 'list'].every((method) => typeof (value as Record<string, unknown>)[method] === 'function') && typeof (value as VmProvider).name === 'string'

/** What `keepWarm: true` means (and the default of each field left out). */
export const KEEP_WARM_DEFAULTS = Object.freeze({ ttlMs: 30 * 60_000, max: 4 })

const keepWarmSchema = z.union([
  // `false`: off, as left out (the Vitest plugin's and the pytest plugin's default spelled out).
  z.boolean(),
  z
    .object({
      /** An idle VM older than this is deleted by the next pool operation on this host or by `vm-pool gc`. */
      ttlMs: z.number().int().positive().default(KEEP_WARM_DEFAULTS.ttlMs),
      /** At most this many idle VMs on this host (for this provider); the oldest go first. */
      max: z.number().int().min(0).default(KEEP_WARM_DEFAULTS.max),
      /**
       * Before a VM goes back to idle: a shell line run in it (e.g. `rm -rf /tmp/test-*`), `'snapshot'`
       * to restore it to the provider's saved clean state (needs `provider.reset`), or `false`: none.
       */
      reset: z.union([z.string().min(1), z.literal(false)]).optional(),
    })
    .strict(),
])

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
    leaseStore: z
      .union([
        z.string().min(1),
        z.custom<LeaseStore>((value) => typeof value === 'object' && value !== null && typeof (value as LeaseStore).update === 'function' && typeof (value as LeaseStore).read === 'function', { error: 'expected a LeaseStore (read, update)' }),
      ])
      .optional(),
  })
  .strict()

export interface PoolOptions {
  provider: VmProvider
  /** Names of `acquire` VMs: `<prefix>-<runId>-<key>`. @default 'vitest-worker' */
  prefix?: string
  /** Names of `fresh()` VMs: `<freshPrefix>-<runId>-<n>`. @default 'vitest-fresh' for the default prefix, else `prefix` */
  freshPrefix?: string
  /**
   * Keep released VMs running as idle warm VMs any process on this host can adopt. `true` means
   * `{ ttlMs: 30 minutes, max: 4 }`. `reset` runs before a VM goes idle: a shell line, or `'snapshot'` to
   * restore the VM to the provider's snapshot (`provider.reset`); left out, it is `'snapshot'` when the
   * provider can reset (so the next holder never sees this one's files) and nothing otherwise; `false`
   * hands the VM over as it is. `keepWarm: false` is the same as leaving `keepWarm` out.
   * @default undefined (release deletes)
   */
  keepWarm?: boolean | { ttlMs?: number; max?: number; reset?: string | false }
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
  /** Identifies this run in VM names and leases. @default 8 random hex digits */
  runId?: string
  /** What every VM of this pool looks like (the name is chosen by the pool). Idle VMs are adopted only with an equal spec. @default {} */
  spec?: PoolVmSpec
  /** Where warnings go (a corrupt lease file, an idle VM that failed its check). @default a line on stderr */
  warn?: (message: string) => void
  /**
   * Where the lease table lives: a `LeaseStore` (e.g. `postgresLeaseStore(...)`), `'file'`, or a
   * `postgres://` connection string (shared by hosts: see docs/pool.md, "Stores"). A store passed in is not
   * closed by `drain()`; one opened from a string is.
   * @default `VM_POOL_LEASE_STORE`, else `'file'`
   */
  leaseStore?: LeaseStore | string
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

/** Validate `createPool` options once, at the edge: a frozen config, and where warnings go. */
export function resolvePoolOptions(options: PoolOptions): { config: ResolvedPoolOptions; warn: (message: string) => void } {
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
  const keepWarm = resolveKeepWarm(raw.keepWarm, provider)
  if (keepWarm?.reset === RESET_TO_SNAPSHOT && typeof provider.reset !== 'function') {
    throw invalidOptions(`keepWarm.reset: '${RESET_TO_SNAPSHOT}' needs a provider that can reset a VM to a snapshot; ${provider.name} cannot`, {
      operation: 'createPool',
      hint: 'use the qemu provider with snapshots on (its default), or a shell line as keepWarm.reset',
    })
  }
  const spec = Object.freeze({ ...raw.spec })
  const config: ResolvedPoolOptions = Object.freeze({
    provider,
    prefix,
    freshPrefix,
    keepWarm,
    stateDir,
    reaper,
    runId,
    spec,
    specHash: getSpecHash(spec, provider),
  })
  const warn = raw.warn ?? ((message: string) => process.stderr.write(`[vm-pool] warning: ${message}\n`))
  return { config, warn }
}

/** `keepWarm: true` → the defaults, `keepWarm: false` → off; a left-out `reset` → `'snapshot'` where the provider can reset; `reset: false` → none. */
function resolveKeepWarm(keepWarm: z.output<typeof keepWarmSchema> | undefined, provider: VmProvider): ResolvedPoolOptions['keepWarm'] {
  if (keepWarm === undefined || keepWarm === false) return undefined
  const given = keepWarm === true ? { ...KEEP_WARM_DEFAULTS } : keepWarm
  const { reset, ...rest } = given as { ttlMs: number; max: number; reset?: string | false }
  const resolved = reset === false ? undefined : (reset ?? (typeof provider.reset === 'function' ? RESET_TO_SNAPSHOT : undefined))
  return Object.freeze({ ...rest, ...(resolved !== undefined ? { reset: resolved } : {}) })
}
