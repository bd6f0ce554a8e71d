import { invalidOptions } from '../errors.js'
import { RUNNER_PREFIX } from '../util/vm-name.js'
import type { PoolVmSpec } from '../pool/spec-hash.js'
import type { JsonValue } from '../providers/vm-provider.js'
import { getStateDir } from '../util/state-dir.js'
import type { HelloPool } from './protocol-messages.js'

/** `keepWarm: true` in `hello`: the same as `vmPool({ keepWarm: true })` in Vitest, so both runners keep alike. */
export const HELPER_KEEP_WARM_DEFAULTS = Object.freeze({ ttlMs: 30 * 60_000, max: 4 })

/** The helper's one pool, resolved from `hello` and the environment the CLI reads too. */
export interface HelperPoolConfig {
  readonly providerName: string
  readonly providerOptions: Readonly<Record<string, JsonValue>>
  readonly stateDir: string
  readonly spec: Readonly<PoolVmSpec>
  readonly keepWarm: Readonly<{ ttlMs: number; max: number; reset?: string }> | undefined
  readonly prefix: string
  readonly freshPrefix: string
}

/**
 * `hello.pool` over the environment: provider `VM_POOL_PROVIDER` (else qemu), options
 * `VM_POOL_PROVIDER_OPTIONS` (a JSON object), state dir `providerOptions.stateDir`, else `VM_POOL_STATE_DIR`,
 * else ~/.cache/vm-pool — the order the Vitest plugin uses, so a pytest run and a Vitest run with the same
 * settings share one lease table (and each other's warm VMs).
 */
export function resolveHelperPoolConfig(pool: HelloPool, env: NodeJS.ProcessEnv): HelperPoolConfig {
  const providerName = pool.provider ?? (env.VM_POOL_PROVIDER || 'qemu')
  const providerOptions = pool.providerOptions ?? readProviderOptionsEnv(env)
  const optionStateDir = typeof providerOptions.stateDir === 'string' ? providerOptions.stateDir : undefined
  const keepWarm = pool.keepWarm === true ? { ...HELPER_KEEP_WARM_DEFAULTS } : pool.keepWarm ? { ...HELPER_KEEP_WARM_DEFAULTS, ...pool.keepWarm } : undefined
  const prefix = pool.prefix ?? RUNNER_PREFIX
  return Object.freeze({
    providerName,
    providerOptions: Object.freeze({ ...providerOptions }),
    stateDir: getStateDir(pool.stateDir ?? optionStateDir, env),
    spec: Object.freeze({ ...pool.spec }),
    keepWarm: keepWarm && Object.freeze(keepWarm),
    prefix,
    freshPrefix: pool.freshPrefix ?? prefix,
  })
}

function readProviderOptionsEnv(env: NodeJS.ProcessEnv): Record<string, JsonValue> {
  const raw = env.VM_POOL_PROVIDER_OPTIONS
  if (!raw) return {}
  let parsed: unknown
  try {
    parsed = JSON.parse(raw)
  } catch {
    // Never quote the text: provider options hold tokens and private keys.
    throw invalidOptions('VM_POOL_PROVIDER_OPTIONS is not valid JSON', { operation: 'hello', hint: 'set it to a JSON object, e.g. {"stateDir":"/tmp/vms"}' })
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw invalidOptions('VM_POOL_PROVIDER_OPTIONS must be a JSON object', { operation: 'hello', hint: 'e.g. {"stateDir":"/tmp/vms"}' })
  }
  return parsed as Record<string, JsonValue>
}
