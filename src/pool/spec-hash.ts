import { createHash } from 'node:crypto'
import type { VmProvider, VmSpec } from '../providers/vm-provider.js'

/** A spec without its name: what a pool asks for; VMs with the same hash are interchangeable. */
export type PoolVmSpec = Omit<VmSpec, 'name'>

/**
 * 16 hex characters over the spec minus its name, keys sorted, `undefined` dropped: `{ cpus: 1 }` and
 * `{ cpus: 1, image: undefined }` hash alike, so a VM booted by `vm-pool warm` is adopted by a pool
 * that asks for the same thing. With a `provider` that has a `fingerprint`, what the provider's options
 * make of the spec counts too: a VM of a qemu provider set to 4 CPUs / 8 GB / ubuntu-24.04 is not adopted
 * by a pool whose provider is set to 1 CPU / 1 GB / ubuntu-22.04, though both pools ask for `{}`.
 * Providers without a fingerprint hash as before (the spec alone).
 */
export function getSpecHash(spec: PoolVmSpec | VmSpec, provider?: Pick<VmProvider, 'fingerprint'>): string {
  const { name: _name, ...rest } = spec as VmSpec
  const hashed = provider?.fingerprint ? { spec: rest, provider: provider.fingerprint(rest) } : rest
  return createHash('sha256').update(stableStringify(hashed)).digest('hex').slice(0, 16)
}

function stableStringify(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value)
  if (Array.isArray(value)) return `[${value.map(stableStringify).join(',')}]`
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${stableStringify(v)}`).join(',')}}`
}
