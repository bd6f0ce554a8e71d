import { isAbsolute, resolve } from 'node:path'
import { z } from 'zod'
import { formatZodError } from '../config/zod-error.js'
import { invalidOptions } from '../errors.js'
import type { JsonValue, VmSpec } from '../providers/vm-provider.js'
import { VM_NAME_PATTERN } from '../util/vm-name.js'
import { vmSpecSchema } from '../config/vm-spec-schema.js'
import { KEEP_WARM_DEFAULTS } from '../pool/pool-options.js'
import type { ProviderName, ProviderOptionsByName } from '../providers/provider-registry.js'
import { docPath } from '../util/docs-path.js'

export { KEEP_WARM_DEFAULTS }

const jsonValue: z.ZodType<JsonValue> = z.lazy(() => z.union([z.string(), z.number(), z.boolean(), z.null(), z.array(jsonValue), z.record(z.string(), jsonValue)]))

export const vmPoolOptionsSchema = z
  .object({
    /** Provider name from the registry (`qemu`, `fake`, ...). @default 'qemu' */
    provider: z.string().min(1).default('qemu'),
    /**
     * Options for that provider. Must be plain JSON: workers rebuild the provider from
     * `createProvider(provider, providerOptions)` to reconnect to the slot's VM.
     * @default {}
     */
    providerOptions: z.record(z.string(), jsonValue).default({}),
    /** Name prefix of the worker-slot VMs: `<prefix>-<runId>-<slot>`. @default 'vitest-worker' */
    prefix: z
      .string()
      .regex(/^[a-z][a-z0-9-]{0,30}$/, 'must be lower-case letters, digits and dashes, starting with a letter, at most 31 characters')
      .default('vitest-worker'),
    /** Boot one VM per worker slot (maxWorkers, no more than the run's test files) in parallel in globalSetup, before any file runs. @default true */
    prewarm: z.boolean().default(true),
    /**
     * Hand the worker VMs back warm at the end of the run instead of deleting them, so the next
     * run (or a parallel CI job on this host) adopts them instead of booting. `true` means
     * `{ ttlMs: 30 minutes, max: 4 }`; `reset` is a shell line run in a VM before it goes back,
     * or `'snapshot'` to restore it to the provider's clean saved state (qemu with snapshots on).
     * Left out, `reset` is `'snapshot'` where the provider can reset (the next run never sees this
     * run's files); `false` hands VMs over as they are. A crashed worker's VM and fresh VMs are always deleted.
     * @default false
     */
    keepWarm: z
      .union([
        z.boolean(),
        z
          .object({
            ttlMs: z.number().int().positive().default(KEEP_WARM_DEFAULTS.ttlMs),
            max: z.number().int().min(0).default(KEEP_WARM_DEFAULTS.max),
            reset: z.union([z.string().min(1), z.literal(false)]).optional(),
          })
          .strict(),
      ])
      .default(false),
    /**
     * Where the pool keeps its lease file and reaper markers.
     * @default `providerOptions.stateDir` when set, else `VM_POOL_STATE_DIR` or `~/.cache/vm-pool`
     */
    stateDir: z.string().min(1).optional(),
    /** Write the end-of-run numbers as JSON to this path (relative to the Vitest root). */
    report: z.string().min(1).optional(),
    /** Multiplies every named timeout, as `VM_POOL_TIMEOUT_SCALE` does (set for the whole run). */
    timeoutScale: z.number().positive().optional(),
    /**
     * Keep the fresh VMs of a failed test running, as the failure left them (their deletes at the end of
     * an `await using` block wait for the test's result); the summary prints how to get a shell in each
     * and how to delete it. Worker VMs are not kept: later files of the slot run on them. @default false
     */
    keepOnFailure: z.boolean().default(false),
    /** Which Vitest worker kind runs the test files. @default 'forks' */
    workers: z.enum(['forks', 'threads']).default('forks'),
    /** The spec of the worker VMs (the name is chosen by vm-pool). */
    spec: vmSpecSchema.default({}),
    /**
     * Where the pool's lease table lives: `'file'` or a `postgres://` connection string, so CI jobs on
     * several machines share warm VMs (docs/pool.md, "Stores"). Only the Vitest main process opens it;
     * workers never see it. @default `VM_POOL_LEASE_STORE`, else `'file'`
     */
    leaseStore: z.string().min(1).optional(),
  })
  .strict()

/**
 * `provider` and `providerOptions`, typed together: a provider name the registry knows, and that
 * provider's own options (`provider: 'qemo'` or `providerOptions: { memoryMB: 512 }` do not type-check).
 */
export type VmPoolProviderChoice =
  | { provider?: 'qemu'; providerOptions?: ProviderOptionsByName['qemu'] }
  | { [P in Exclude<ProviderName, 'qemu'>]: { provider: P; providerOptions?: ProviderOptionsByName[P] } }[Exclude<ProviderName, 'qemu'>]

/** What a user passes to `vmPool()`. */
export type VmPoolOptions = Omit<z.input<typeof vmPoolOptionsSchema>, 'provider' | 'providerOptions'> & VmPoolProviderChoice

/** Validated, defaults applied, frozen: what the rest of `vm-pool/vitest` sees. */
export interface ResolvedVmPoolOptions {
  readonly provider: string
  readonly providerOptions: Readonly<Record<string, JsonValue>>
  readonly prefix: string
  readonly prewarm: boolean
  readonly keepWarm: { readonly ttlMs: number; readonly max: number; readonly reset?: string | false | undefined } | undefined
  readonly stateDir: string | undefined
  /** Absolute once `resolveReportPath` ran (the Vitest root is known in the config hook). */
  readonly report: string | undefined
  readonly timeoutScale: number | undefined
  readonly workers: 'forks' | 'threads'
  readonly keepOnFailure: boolean
  readonly spec: Readonly<Omit<VmSpec, 'name'>>
  readonly leaseStore: string | undefined
}

export function resolveVmPoolOptions(options: unknown, providerNames: readonly string[]): ResolvedVmPoolOptions {
  const parsed = vmPoolOptionsSchema.safeParse(options ?? {})
  if (!parsed.success) {
    throw invalidOptions(`invalid vmPool() options: ${formatZodError(parsed.error, options ?? {})}`, { operation: 'vmPool', hint: `see ${docPath('vitest.md')} (Options)` })
  }
  const data = parsed.data
  if (!providerNames.includes(data.provider)) {
    throw invalidOptions(`invalid vmPool() options: provider: unknown provider ${JSON.stringify(data.provider)}`, {
      operation: 'vmPool',
      hint: `choose one of: ${providerNames.join(', ')}`,
    })
  }
  // The slot VM name is `<prefix>-<runId>-<slot>`: keep it inside the provider name rules.
  if (!VM_NAME_PATTERN.test(`${data.prefix}-xxxxxxxx-99`)) {
    throw invalidOptions(`invalid vmPool() options: prefix: ${JSON.stringify(data.prefix)} makes VM names too long`, { operation: 'vmPool' })
  }
  return Object.freeze({
    provider: data.provider,
    providerOptions: Object.freeze({ ...data.providerOptions }),
    prefix: data.prefix,
    prewarm: data.prewarm,
    keepWarm: data.keepWarm === true ? { ...KEEP_WARM_DEFAULTS } : data.keepWarm === false ? undefined : Object.freeze({ ...data.keepWarm }),
    stateDir: data.stateDir ?? (typeof data.providerOptions.stateDir === 'string' ? data.providerOptions.stateDir : undefined),
    report: data.report,
    timeoutScale: data.timeoutScale,
    workers: data.workers,
    keepOnFailure: data.keepOnFailure,
    spec: Object.freeze({ ...data.spec }),
    leaseStore: data.leaseStore,
  })
}

/** `report` relative to the Vitest root. */
export function resolveReportPath(report: string | undefined, root: string): string | undefined {
  if (report === undefined) return undefined
  return isAbsolute(report) ? report : resolve(root, report)
}
