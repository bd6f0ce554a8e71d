import { createHash } from 'node:crypto'
import type { VmProvider, VmSpec } from '../providers/vm-provider.js'

/** A spec without its name: what a pool asks for; VMs with the same hash are interchangeable. */
export type PoolVmSpec = Omit<VmSpec, 'name'>

/**
 * 16 hex characters over the spec minus its name, keys sorted, `undefined` dropped: `{ cpus: 1 }` and
 * `{ cpus: 1, image: undefined }` hash alike, so a VM booted by `vm-pool warm` is adopted by a pool
 * that asks for the same thing.
 */
export function getSpecHash(spec: PoolVmSpec | VmSpec): string {
  const { name: _name, ...rest } = spec as VmSpec
  return createHash('sha256').update(stableStringify(rest)).digest('hex').slice(0, 16)
}

/**
 * The hash a pool files a VM under: the spec over the provider's `specDefaults`, so `{}` asked of a
 * provider whose default image is debian-12 never matches a warm VM of the default minimal image.
 */
export function getPoolSpecHash(provider: Pick<VmProvider, 'specDefaults'>, spec: PoolVmSpec): string {
  return getSpecHash({ ...provider.specDefaults, ...spec })
}

function stableStringify(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value)
  if (Array.isArray(value)) return `[${value.map(stableStringify).join(',')}]`
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${stableStringify(v)}`).join(',')}}`
}
