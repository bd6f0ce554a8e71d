import { rm } from 'node:fs/promises'
import type { VmInfo, VmProvider } from '../providers/vm-provider.js'
import { getCurrentProcessIdentity, isProcessAlive } from '../util/process-info.js'
import { getStateDir } from '../util/state-dir.js'
import { scaleTimeout, withTimeout } from '../util/timeouts.js'
import { formatDuration } from './duration.js'
import { FileLeaseStore } from './file-lease-store.js'
import { isSameOwner, type LeaseEntry, type LeaseStore } from './lease-store.js'
import { judgeRunnerName, matchesSweepPrefix, SWEEP_PREFIXES } from './naming.js'
import { findOrphanedMarkers, reapOwner } from './reaper.js'

/** One health check of an idle warm VM (`true` over exec). Scaled. */
export const GC_HEALTH_CHECK_TIMEOUT_MS = 15_000
/** One delete. Scaled. */
export const GC_DELETE_TIMEOUT_MS = 120_000
/**
 * After a corrupt lease file is rebuilt, owners are unknown until the holders' next lease update
 * re-registers them. gc keeps such VMs this long rather than risk deleting one a live run still uses.
 */
export const RECOVERED_LEASE_GRACE_MS = 10 * 60_000

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
  warn?: (message: string) => void
}

export interface GcDecision {
  name: string
  action: 'delete' | 'keep'
  reason: string
  /** The lease state, if the lease store knows the VM. */
  lease?: LeaseEntry['state']
  ownerPid?: number
  /** Set when a delete failed. */
  error?: string
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
}

/**
 * `vm-pool gc`: delete VMs left by crashed or interrupted runs, never one a live process holds.
 * Decisions are taken under the lease lock and every deleted VM is first marked `deleting`, so a pool that
 * adopts an idle VM at the same moment either gets it before gc decides or never sees it.
 */
export async function collectGarbage(options: GcOptions): Promise<GcReport> {
  const { provider } = options
  const store: LeaseStore = new FileLeaseStore({ provider, stateDir: options.stateDir, warn: options.warn })
  const prefixes = [...SWEEP_PREFIXES, ...(options.prefixes ?? [])]
  const dryRun = options.dryRun ?? false
  const infos = await provider.list()
  const swept = infos.filter((info) => matchesSweepPrefix(info.name, prefixes))

  // Health checks exec in VMs: too slow for inside the lock. Their results count only if the entry is still the same idle lease.
  const health = new Map<string, { updatedAt: string; error?: string }>()
  if (!options.all) {
    const table = await store.read()
    await Promise.all(
      swept.map(async (info) => {
        const entry = table[info.name]
        if (entry?.state !== 'idle' || !entry.record || isExpired(entry, Date.now())) return
        health.set(info.name, { updatedAt: entry.updatedAt, ...(await checkHealth(provider, entry)) })
      }),
    )
  }

  const me = getCurrentProcessIdentity()
  const listed = new Set(infos.map((info) => info.name))
  const { decisions, forgotten } = await store.update((table) => {
    const now = Date.now()
    const decisions = swept.map((info) => decide(info, table[info.name], now, options, health))
    const forgotten: string[] = []
    if (!dryRun) {
      for (const decision of decisions) {
        const entry = table[decision.name]
        if (decision.action === 'delete' && entry) {
          entry.state = 'deleting'
          entry.owner = me
          entry.updatedAt = new Date(now).toISOString()
        }
      }
      for (const entry of Object.values(table)) {
        if (listed.has(entry.name)) continue
        const unheld = entry.state === 'idle' || (entry.owner !== null && !isProcessAlive(entry.owner))
        if (unheld) {
          delete table[entry.name]
          forgotten.push(entry.name)
        }
      }
    }
    return { decisions, forgotten }
  })

  const report: GcReport = { dryRun, deleted: [], kept: [], failed: [], forgotten, ignored: infos.length - swept.length }
  for (const decision of decisions) {
    if (decision.action === 'keep') {
      report.kept.push(decision)
      continue
    }
    if (dryRun) {
      report.deleted.push(decision)
      continue
    }
    try {
      const ms = scaleTimeout(GC_DELETE_TIMEOUT_MS)
      await withTimeout(provider.delete(decision.name), { name: 'GC_DELETE_TIMEOUT_MS', ms, what: `${provider.name} to delete ${decision.name}`, provider: provider.name, vm: decision.name })
      report.deleted.push(decision)
    } catch (error) {
      // The entry stays `deleting` with this (soon dead) process as owner: the next gc or pool retries it.
      report.failed.push({ ...decision, error: (error as Error).message })
    }
  }
  if (!dryRun && report.deleted.length > 0) {
    const gone = new Set(report.deleted.map((decision) => decision.name))
    await store.update((table) => {
      for (const name of gone) if (table[name] && isSameOwner(table[name].owner, me)) delete table[name]
    })
  }
  // A dead owner's reaper marker still on disk means its watchdog never finished: do its job (this also
  // reaches VMs whose names match no sweep prefix, e.g. a pool with a custom prefix).
  if (!dryRun) {
    const stateDir = getStateDir(options.stateDir)
    for (const marker of await findOrphanedMarkers(stateDir, provider.name)) {
      const reaped = await reapOwner({ provider, store, owner: marker.owner, runId: marker.runId, names: marker.names })
      const reported = new Set([...report.deleted, ...report.failed].map((decision) => decision.name))
      for (const name of reaped.deleted) {
        if (!reported.has(name) && listed.has(name)) report.deleted.push({ name, action: 'delete', reason: `holder pid ${marker.owner.pid} is gone (from its reaper marker)`, ownerPid: marker.owner.pid })
      }
      for (const failure of reaped.failed) report.failed.push({ name: failure.name, action: 'delete', reason: `holder pid ${marker.owner.pid} is gone (from its reaper marker)`, error: failure.message })
      if (reaped.failed.length === 0) await rm(marker.path, { force: true })
    }
  }
  return report
}

function decide(info: VmInfo, entry: LeaseEntry | undefined, now: number, options: GcOptions, health: Map<string, { updatedAt: string; error?: string }>): GcDecision {
  const name = info.name
  const lease = { ...(entry ? { lease: entry.state } : {}), ...(entry?.owner ? { ownerPid: entry.owner.pid } : {}) }
  const keep = (reason: string): GcDecision => ({ name, action: 'keep', reason, ...lease })
  const createdAt = Date.parse(entry?.createdAt ?? info.createdAt ?? '')
  const age = Number.isFinite(createdAt) ? now - createdAt : Number.POSITIVE_INFINITY
  const tooYoung = (options.olderThanMs ?? 0) > 0 && age < options.olderThanMs!
  // --older-than only ever turns a delete into a keep; the reason says what would have happened.
  const remove = (reason: string): GcDecision =>
    tooYoung ? keep(`younger than --older-than (age ${formatDuration(age)}); otherwise: ${reason}`) : { name, action: 'delete', reason, ...lease }

  if (entry?.owner && entry.state !== 'idle' && isProcessAlive(entry.owner)) {
    return keep(`${entry.state} by live pid ${entry.owner.pid} on ${entry.owner.host} (run ${entry.runId})`)
  }
  if (entry) {
    if (entry.state === 'idle') {
      if (options.all) return remove('idle warm VM (--all)')
      if (isExpired(entry, now)) return remove(`idle warm VM past its ttl (expired ${formatDuration(now - Date.parse(entry.expiresAt!))} ago)`)
      const checked = health.get(name)
      if (!entry.record) return remove('idle warm VM without a connection record')
      if (checked && checked.updatedAt === entry.updatedAt) {
        if (checked.error) return remove(`idle warm VM failed its health check: ${checked.error}`)
        return keep(`healthy idle warm VM${entry.expiresAt ? ` (expires in ${formatDuration(Date.parse(entry.expiresAt) - now)})` : ''}; --all deletes it`)
      }
      return keep('idle warm VM (not checked: it changed while gc ran)')
    }
    if (entry.owner === null) {
      const since = Date.parse(entry.recoveredAt ?? entry.updatedAt)
      if (now - since < RECOVERED_LEASE_GRACE_MS) return keep(`owner unknown since the lease file was rebuilt ${formatDuration(now - since)} ago; kept for ${formatDuration(RECOVERED_LEASE_GRACE_MS)} in case its holder is alive`)
      return remove(`owner unknown since the lease file was rebuilt ${formatDuration(now - since)} ago`)
    }
    return remove(`holder pid ${entry.owner.pid} is gone (${entry.state}, run ${entry.runId})`)
  }
  const runner = judgeRunnerName(name)
  if (runner) return runner.alive ? keep(runner.reason) : remove(runner.reason)
  return remove('no lease: no live vm-pool process holds it')
}

function isExpired(entry: LeaseEntry, now: number): boolean {
  return entry.expiresAt !== undefined && Date.parse(entry.expiresAt) <= now
}

async function checkHealth(provider: VmProvider, entry: LeaseEntry): Promise<{ error?: string }> {
  const ms = scaleTimeout(GC_HEALTH_CHECK_TIMEOUT_MS)
  try {
    const vm = await provider.connect(entry.record!)
    try {
      const result = await withTimeout(vm.exec('true', { timeoutMs: ms }), { name: 'GC_HEALTH_CHECK_TIMEOUT_MS', ms, what: `${entry.name} to run \`true\``, provider: provider.name, vm: entry.name })
      return result.exitCode === 0 ? {} : { error: `\`true\` exited with ${result.exitCode}` }
    } finally {
      await vm.close?.().catch(() => {})
    }
  } catch (error) {
    return { error: (error as Error).message.split('\n')[0] ?? 'unknown error' }
  }
}
