import type { VmProvider, VmRecord, VmState } from '../providers/vm-provider.js'
import type { LeaseState, LeaseStore } from './lease-store.js'
import { openLeaseStore } from './lease-store-selection.js'
import { hostAwareLiveness, isOnOtherHost, localProcessLiveness } from './owner-liveness.js'

export interface VmListingRow {
  name: string
  /** What the provider says; `missing` for a lease whose VM the provider does not list (yet: booting). */
  vmState: VmState | 'missing'
  lease: LeaseState | null
  /**
   * `otherHost`: the owner runs on another host, so `alive` is a guess (true: nothing here can check it);
   * `vm-pool gc --assume-dead-host HOST` collects such leases.
   */
  owner: { pid: number; host: string; alive: boolean; otherHost: boolean } | null
  runId: string | null
  key: string | null
  /** Milliseconds since creation, when known. */
  ageMs: number | null
  expiresAt: string | null
  /** How to reach it, when the provider recorded it: address, port, user and key file path (never key contents). */
  connection: VmConnection | null
}

export interface VmConnection {
  /** `vm-pool ssh <name> --provider <provider>`: a shell, or `-- command` to run one. */
  command: string
  host?: string
  port?: number
  user?: string
  /** The private key file by path. */
  keyPath?: string
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
      owner: entry?.owner ? { pid: entry.owner.pid, host: entry.owner.host, alive: liveness.isAlive(entry.owner, now), otherHost: isOnOtherHost(entry.owner) } : null,
      runId: entry?.runId ?? null,
      key: entry?.key ?? null,
      ageMs: Number.isFinite(created) ? now - created : null,
      expiresAt: entry?.expiresAt ?? null,
      connection: getConnection(name, options.provider.name, (info?.record ?? entry?.record)?.data),
    }
  })
}

/** Only these plain fields of a record's data: a record never holds secrets, and a listing names files by path. */
function getConnection(name: string, provider: string, data: VmRecord['data'] | undefined): VmConnection | null {
  if (!data) return null
  const connection: VmConnection = { command: `vm-pool ssh ${name} --provider ${provider}` }
  if (typeof data.host === 'string') connection.host = data.host
  if (typeof data.port === 'number') connection.port = data.port
  const user = data.username ?? data.user
  if (typeof user === 'string') connection.user = user
  if (typeof data.keyPath === 'string') connection.keyPath = data.keyPath
  return connection
}
