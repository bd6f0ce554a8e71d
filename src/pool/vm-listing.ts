import type { VmProvider, VmState } from '../providers/vm-provider.js'
import type { LeaseState, LeaseStore } from './lease-store.js'
import { openLeaseStore } from './lease-store-selection.js'
import { hostAwareLiveness, localProcessLiveness } from './owner-liveness.js'

export interface VmListingRow {
  name: string
  /** What the provider says; `missing` for a lease whose VM the provider does not list (yet: booting). */
  vmState: VmState | 'missing'
  lease: LeaseState | null
  owner: { pid: number; host: string; alive: boolean } | null
  runId: string | null
  key: string | null
  /** Milliseconds since creation, when known. */
  ageMs: number | null
  expiresAt: string | null
}

/** `vm-pool ls`: every VM the provider sees joined with the lease table, plus leases whose VM is not listed. */
export async function listVms(options: { provider: VmProvider; stateDir?: string; leaseStore?: LeaseStore | string }): Promise<VmListingRow[]> {
  const infos = await options.provider.list()
  const { store, owned } = openLeaseStore(options.leaseStore, { provider: options.provider, ...(options.stateDir ? { stateDir: options.stateDir } : {}) })
  // A no-op update: the table with the store's clock and its judge of owners on other hosts (heartbeats).
  const { table, now, liveness } = await store
    .update((current, context) => ({ table: structuredClone(current), now: context.now, liveness: hostAwareLiveness(localProcessLiveness, context.remoteLiveness) }))
    .finally(() => (owned ? store.close?.() : undefined))
  const names = new Set([...infos.map((info) => info.name), ...Object.keys(table)])
  const byName = new Map(infos.map((info) => [info.name, info]))
  return [...names].sort().map((name) => {
    const info = byName.get(name)
    const entry = table[name]
    const created = Date.parse(entry?.createdAt ?? info?.createdAt ?? '')
    return {
      name,
      vmState: info?.state ?? 'missing',
      lease: entry?.state ?? null,
      owner: entry?.owner ? { pid: entry.owner.pid, host: entry.owner.host, alive: liveness.isAlive(entry.owner, now) } : null,
      runId: entry?.runId ?? null,
      key: entry?.key ?? null,
      ageMs: Number.isFinite(created) ? now - created : null,
      expiresAt: entry?.expiresAt ?? null,
    }
  })
}
