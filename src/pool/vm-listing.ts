import type { VmProvider, VmState } from '../providers/vm-provider.js'
import { FileLeaseStore } from './file-lease-store.js'
import type { LeaseState } from './lease-store.js'
import { localProcessLiveness } from './owner-liveness.js'

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
export async function listVms(options: { provider: VmProvider; stateDir?: string }): Promise<VmListingRow[]> {
  const infos = await options.provider.list()
  const table = await new FileLeaseStore({ provider: options.provider, stateDir: options.stateDir }).read()
  const now = Date.now()
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
      owner: entry?.owner ? { pid: entry.owner.pid, host: entry.owner.host, alive: localProcessLiveness.isAlive(entry.owner, now) } : null,
      runId: entry?.runId ?? null,
      key: entry?.key ?? null,
      ageMs: Number.isFinite(created) ? now - created : null,
      expiresAt: entry?.expiresAt ?? null,
    }
  })
}
