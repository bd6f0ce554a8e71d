import { rm } from 'node:fs/promises'
import type { VmProvider, VmRecord } from '../providers/vm-provider.js'
import { getCurrentProcessIdentity } from '../util/process-info.js'
import { getStateDir } from '../util/state-dir.js'
import { scaleTimeout } from '../util/timeouts.js'
import { judgeNamedOwner, matchesSweepPrefix, SWEEP_PREFIXES, VM_NAME_PATTERN } from '../util/vm-name.js'
import { deleteAnnounced } from './announced-delete.js'
import type { LeaseStore } from './lease-store.js'
import { openLeaseStore } from './lease-store-selection.js'
import { announceGcDeletes, decideGc, forgetVanished, isExpired, type GcDecision, type GcFacts, type LeaseActor } from './lease-table.js'
import { assumeDeadHosts, hostAwareLiveness, localProcessLiveness, type OwnerLiveness } from './owner-liveness.js'
import { findLiveMarkerHolders, findOrphanedMarkers } from './reaper-marker.js'
import { reapOwner } from './reaper.js'
import { connectAndCheck } from './vm-health-check.js'

export { RECOVERED_LEASE_GRACE_MS, type GcDecision } from './lease-table.js'

/** One health check of an idle warm VM (`true` over exec). Scaled. */
export const GC_HEALTH_CHECK_TIMEOUT_MS = 15_000
/** One delete. Scaled. */
export const GC_DELETE_TIMEOUT_MS = 120_000

export interface GcOptions {
  provider: VmProvider
  /** @default `VM_POOL_STATE_DIR` or `~/.cache/vm-pool` */
  stateDir?: string
  /** Decide and report, delete nothing. @default false */
  dryRun?: boolean
  /** Only VMs at least this old are deleted. @default 0 */
  olderThanMs?: number
  /** Swept in addition to `SWEEP_PREFIXES` (without the trailing dash). @default [] */
  prefixes?: readonly string[]
  /** Also delete healthy idle warm VMs. Never VMs a live process holds. @default false */
  all?: boolean
  /**
   * Host names whose lease owners are taken as dead (`--assume-dead-host`): owners on other hosts otherwise
   * count as alive for ever, since no pid check reaches them. Never this host. @default []
   */
  assumeDeadHosts?: readonly string[]
  warn?: (message: string) => void
  /** The lease store (see `createPool`'s `leaseStore`). @default `VM_POOL_LEASE_STORE`, else the lease file */
  leaseStore?: LeaseStore | string
}

export interface GcReport {
  dryRun: boolean
  /** Deleted (or, with dryRun, would be deleted). */
  deleted: GcDecision[]
  kept: GcDecision[]
  failed: GcDecision[]
  /** Lease entries dropped because their VM no longer exists and nobody alive holds them. */
  forgotten: string[]
  /** VMs whose names match no sweep prefix: never touched. */
  ignored: number
  /**
   * VMs whose names match a sweep prefix but are no vm-pool name (`vitest-worker-UPPER`, as a Firecracker
   * API can list): never touched — no pool made them, and every provider refuses such a name anyway.
   */
  skipped: GcSkipped[]
}

export interface GcSkipped {
  name: string
  reason: string
}

/**
 * `vm-pool gc`: delete VMs left by crashed or interrupted runs, never one a live process holds.
 * Everything slow or I/O-bound (the VM list, health checks, reaper markers, what a name says about its owner)
 * happens before the lock; the decisions (lease-table.ts `decideGc`) are taken under it on the current table,
 * and the deletes go through `deleteAnnounced`, so a pool that adopts an idle VM at the same moment either
 * gets it before gc decides or never sees it.
 */
export async function collectGarbage(options: GcOptions): Promise<GcReport> {
  const { provider } = options
  const { store, owned } = openLeaseStore(options.leaseStore, { provider, ...(options.stateDir ? { stateDir: options.stateDir } : {}), ...(options.warn ? { warn: options.warn } : {}) })
  try {
    return await collect(options, store)
  } finally {
    if (owned) await store.close?.()
  }
}

async function collect(options: GcOptions, store: LeaseStore): Promise<GcReport> {
  const { provider } = options
  const stateDir = getStateDir(options.stateDir)
  const liveness = assumeDeadHosts(localProcessLiveness, options.assumeDeadHosts ?? [])
  const prefixes = [...SWEEP_PREFIXES, ...(options.prefixes ?? [])]
  const dryRun = options.dryRun ?? false
  // On the store's clock (the database's, for a store shared by hosts): entries' updatedAt are on it.
  const listingStartedAt = await store.update((_table, context) => context.now)
  const infos = await provider.list()
  const matching = infos.filter((info) => matchesSweepPrefix(info.name, prefixes))
  // A name no pool could have made used to reach provider.delete, fail there, and make every gc exit 1.
  const swept = matching.filter((info) => VM_NAME_PATTERN.test(info.name))
  const skipped = matching
    .filter((info) => !VM_NAME_PATTERN.test(info.name))
    .map((info) => ({ name: info.name, reason: `not a vm-pool VM name (${VM_NAME_PATTERN.source}): left alone` }))
  const liveMarkers = await findLiveMarkerHolders(stateDir, provider.name, liveness)

  const facts = new Map<string, GcFacts>()
  for (const info of swept) {
    const liveMarker = liveMarkers.get(info.name)
    facts.set(info.name, { ...(info.createdAt ? { createdAt: info.createdAt } : {}), namedOwner: judgeNamedOwner(info.name), ...(liveMarker ? { liveMarker } : {}) })
  }
  // Health checks exec in VMs: too slow for inside the lock. Their results count only if the entry is still the same idle lease.
  if (!options.all) {
    const table = await store.read()
    await Promise.all(
      swept.map(async (info) => {
        const entry = table[info.name]
        if (entry?.state !== 'idle' || !entry.record || isExpired(entry, Date.now())) return
        facts.get(info.name)!.health = { updatedAt: entry.updatedAt, ...(await checkHealth(provider, entry.record)) }
      }),
    )
  }

  const actor: LeaseActor = { owner: getCurrentProcessIdentity(), runId: 'gc' }
  const listed = new Set(infos.map((info) => info.name))
  let inUpdate: OwnerLiveness = liveness
  const { result, deleted, failed } = await deleteAnnounced(
    {
      // Owners on other hosts are judged by the store's heartbeats, on its clock.
      update: (mutate) =>
        store.update((table, context) => {
          inUpdate = assumeDeadHosts(hostAwareLiveness(localProcessLiveness, context.remoteLiveness), options.assumeDeadHosts ?? [])
          return mutate(table, context.now)
        }),
      provider,
      actor,
      timeout: { name: 'GC_DELETE_TIMEOUT_MS', ms: scaleTimeout(GC_DELETE_TIMEOUT_MS) },
    },
    (table, now) => {
      const decisions = swept.map((info) => decideGc(info.name, table[info.name], facts.get(info.name)!, options, inUpdate, now))
      if (dryRun) return { names: [], result: { decisions, forgotten: [] as string[] } }
      const names = announceGcDeletes(table, decisions, actor, now)
      const forgotten = forgetVanished(table, { names: listed, startedAt: listingStartedAt }, inUpdate, now)
      return { names, result: { decisions, forgotten } }
    },
  )

  const report: GcReport = { dryRun, deleted: [], kept: [], failed: [], forgotten: result.forgotten, ignored: infos.length - matching.length, skipped }
  const errors = new Map(failed.map(({ name, error }) => [name, (error as Error).message]))
  for (const decision of result.decisions) {
    if (decision.action === 'keep') report.kept.push(decision)
    else if (errors.has(decision.name)) report.failed.push({ ...decision, error: errors.get(decision.name)! })
    else if (dryRun || deleted.includes(decision.name)) report.deleted.push(decision)
  }
  // A dead owner's reaper marker still on disk means its watchdog never finished: do its job (this also
  // reaches VMs whose names match no sweep prefix, e.g. a pool with a custom prefix).
  if (!dryRun) {
    for (const marker of await findOrphanedMarkers(stateDir, provider.name, liveness)) {
      const reaped = await reapOwner({ provider, store, owner: marker.owner, runId: marker.runId, names: marker.names })
      const reported = new Set([...report.deleted, ...report.failed].map((decision) => decision.name))
      const reason = `holder pid ${marker.owner.pid} is gone (from its reaper marker)`
      for (const name of reaped.deleted) {
        if (!reported.has(name) && listed.has(name)) report.deleted.push({ name, action: 'delete', reason, ownerPid: marker.owner.pid })
      }
      for (const failure of reaped.failed) report.failed.push({ name: failure.name, action: 'delete', reason, error: failure.message })
      if (reaped.failed.length === 0) await rm(marker.path, { force: true })
    }
  }
  return report
}

async function checkHealth(provider: VmProvider, record: VmRecord): Promise<{ error?: string }> {
  try {
    const vm = await connectAndCheck(provider, record, { name: 'GC_HEALTH_CHECK_TIMEOUT_MS', ms: scaleTimeout(GC_HEALTH_CHECK_TIMEOUT_MS) })
    await vm.close?.().catch(() => {})
    return {}
  } catch (error) {
    return { error: (error as Error).message.split('\n')[0] ?? 'unknown error' }
  }
}
