import type { VmProvider } from '../providers/vm-provider.js'
import { getCurrentProcessIdentity } from '../util/process-info.js'
import { getStateDir } from '../util/state-dir.js'
import { scaleTimeout } from '../util/timeouts.js'
import { deleteAnnounced } from './announced-delete.js'
import { FileLeaseStore } from './file-lease-store.js'
import { GC_DELETE_TIMEOUT_MS } from './garbage-collector.js'
import { announceRemoves, decideRemove, type LeaseActor, type RemoveDecision } from './lease-table.js'
import { localProcessLiveness } from './owner-liveness.js'
import { findLiveMarkerHolders } from './reaper-marker.js'

export type { RemoveDecision } from './lease-table.js'

export interface RemoveVmsOptions {
  provider: VmProvider
  names: readonly string[]
  /** Delete even a VM a live process holds (its holder then loses it mid-use). @default false */
  force?: boolean
  /** @default `VM_POOL_STATE_DIR` or `~/.cache/vm-pool` */
  stateDir?: string
}

export interface RemoveVmsResult {
  deleted: RemoveDecision[]
  refused: RemoveDecision[]
  missing: RemoveDecision[]
  failed: (RemoveDecision & { error: string })[]
}

/**
 * `vm-pool rm`: exactly the named VMs, never a name that merely starts with them (unlike `gc --prefix`).
 * The decisions are lease-table.ts `decideRemove`, taken under the lock; the deletes go through
 * `deleteAnnounced` like every other delete of a VM that may have a lease, and drop its lease after.
 */
export async function removeVms(options: RemoveVmsOptions): Promise<RemoveVmsResult> {
  const { provider } = options
  const stateDir = getStateDir(options.stateDir)
  const store = new FileLeaseStore({ provider, stateDir })
  const listed = new Set((await provider.list()).map((info) => info.name))
  const liveMarkers = await findLiveMarkerHolders(stateDir, provider.name, localProcessLiveness)
  const actor: LeaseActor = { owner: getCurrentProcessIdentity(), runId: 'vm-pool-rm' }
  const { result: decisions, deleted, failed } = await deleteAnnounced(
    { update: (mutate) => store.update((table) => mutate(table, Date.now())), provider, actor, timeout: { name: 'GC_DELETE_TIMEOUT_MS', ms: scaleTimeout(GC_DELETE_TIMEOUT_MS) } },
    (table, now) => {
      const decisions = [...new Set(options.names)].map((name) => {
        const marker = liveMarkers.get(name)
        return decideRemove(name, table[name], { listed: listed.has(name), ...(marker ? { liveMarker: marker } : {}) }, options.force === true, localProcessLiveness, now)
      })
      return { names: announceRemoves(table, decisions, actor, now), result: decisions }
    },
  )
  const byName = new Map(decisions.map((decision) => [decision.name, decision]))
  return {
    deleted: deleted.map((name) => byName.get(name)!),
    refused: decisions.filter((decision) => decision.action === 'refuse'),
    missing: decisions.filter((decision) => decision.action === 'missing'),
    failed: failed.map(({ name, error }) => ({ ...byName.get(name)!, error: (error as Error).message })),
  }
}
