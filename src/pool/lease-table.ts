/**
 * The lease state machine: every decision about who holds a VM and when it may be deleted, as pure
 * functions over a `LeaseTable`. No I/O: the clock (`now`, Unix ms) and the owner liveness judge are passed
 * in, and the callers (the pool, `vm-pool gc`, the reaper) run these inside `LeaseStore.update`.
 * The picture is in docs/architecture.md ("The lease state machine") and docs/pool.md:
 * Why this file is long: the whole safety-critical protocol is kept in one module on purpose, so every
 * transition can be read (and tested, test/unit/lease-table.test.ts) side by side.
 *
 *   (none) ─reserveName→ booting ─markLeased→ leased ─markIdle→ idle ─adoptIdle→ leased
 *   booting | leased | idle ─markDeleting→ deleting ─dropIfStillOurs→ (none)
 *   leased ─replaceRecord→ leased (a snapshot reset while held gives the VM a new record)
 *
 * Rules that keep "never two holders, never a live VM deleted" true across processes:
 * a name is reserved before the VM exists; an idle VM is claimed before anyone execs in it; only a VM
 * nobody alive holds is marked `deleting`, and whoever marked it owns the delete (see announced-delete.ts).
 */
import type { VmRecord } from '../providers/vm-provider.js'
import { validateVmName } from '../util/vm-name.js'
import { formatDuration } from './duration.js'
import type { LeaseEntry, LeaseKind, LeaseTable } from './lease-store.js'
import { isSameOwner, type LeaseOwner, type OwnerLiveness } from './owner-liveness.js'

/** Who acts on the table: written as the owner of what it claims, reserves or deletes. */
export interface LeaseActor {
  owner: LeaseOwner
  runId: string
}

const iso = (now: number) => new Date(now).toISOString()

// ── Judgements ────────────────────────────────────────────────────────────────────────────────────

/** An idle VM past its ttl: never adopted; deleted by the next pool operation or gc. */
export function isExpired(entry: LeaseEntry, now: number): boolean {
  return entry.state === 'idle' && entry.expiresAt !== undefined && Date.parse(entry.expiresAt) <= now
}

/** Held (booting, leased, deleting) by an owner the judge says is alive. Idle VMs are held by nobody. */
export function isHeldByLiveOwner(entry: LeaseEntry, liveness: OwnerLiveness, now: number): boolean {
  return entry.state !== 'idle' && entry.owner !== null && liveness.isAlive(entry.owner, now)
}

/** Held by an owner that died: whatever it held is nobody's now. Owner-unknown entries (rebuilt) are not orphaned. */
export function isOrphaned(entry: LeaseEntry, liveness: OwnerLiveness, now: number): boolean {
  return entry.state !== 'idle' && entry.owner !== null && !liveness.isAlive(entry.owner, now)
}

// ── Transitions ───────────────────────────────────────────────────────────────────────────────────

/**
 * (none) → booting: reserve a name before `provider.create`, so every VM a provider lists has an entry or is
 * not a pool's. A taken name gets `-2`, `-3`... unless `exactName`; then `undefined` (the caller refuses).
 */
export function reserveName(
  table: LeaseTable,
  request: { base: string; exactName: boolean; provider: string; specHash: string; kind: LeaseKind; key?: string },
  actor: LeaseActor,
  now: number,
  token?: number,
): LeaseEntry | undefined {
  let name = request.base
  if (table[name]) {
    if (request.exactName) return undefined
    // `<prefix>-<runId>-<key>` is taken when another process adopted the VM this key once had: suffix it.
    for (let n = 2; table[name]; n++) name = validateVmName(`${request.base}-${n}`)
  }
  const entry: LeaseEntry = { name, provider: request.provider, specHash: request.specHash, kind: request.kind, state: 'booting', owner: actor.owner, runId: actor.runId, createdAt: iso(now), updatedAt: iso(now) }
  if (request.key !== undefined) entry.key = request.key
  if (token !== undefined) entry.token = token
  table[name] = entry
  return entry
}

/** booting → leased, once `provider.create` returned. `reserved` stands in if the entry vanished meanwhile (a rebuilt file). */
export function markLeased(table: LeaseTable, reserved: LeaseEntry, record: VmRecord, actor: LeaseActor, now: number): LeaseEntry {
  const entry = table[reserved.name] ?? structuredClone(reserved)
  entry.state = 'leased'
  entry.owner = actor.owner
  entry.record = record
  entry.updatedAt = iso(now)
  delete entry.recoveredAt
  table[reserved.name] = entry
  return entry
}

/** leased → leased with the record a snapshot reset returned (`VmLease.reset()`). `undefined` when the entry is no longer ours. */
export function replaceRecord(table: LeaseTable, name: string, record: VmRecord, actor: LeaseActor, now: number): LeaseEntry | undefined {
  const entry = table[name]
  if (!entry || !isSameOwner(entry.owner, actor.owner)) return undefined
  entry.record = record
  entry.updatedAt = iso(now)
  return entry
}

/**
 * The idle VM to adopt: same provider and spec, unexpired, connectable; among those the highest `rank` (the
 * pool ranks the VMs it still has a connection to first, see parked-vms.ts; `undefined` leaves one out),
 * then the most recently idle (furthest from its ttl).
 */
export function pickIdleToAdopt(table: LeaseTable, want: { provider: string; specHash: string }, now: number, rank?: (entry: LeaseEntry) => number | undefined): LeaseEntry | undefined {
  let best: LeaseEntry | undefined
  let bestRank = 0
  for (const entry of Object.values(table)) {
    if (entry.state !== 'idle' || entry.provider !== want.provider || entry.specHash !== want.specHash || !entry.record || isExpired(entry, now)) continue
    const entryRank = rank ? rank(entry) : 0
    if (entryRank === undefined) continue
    if (!best || entryRank > bestRank || (entryRank === bestRank && (entry.idleSince ?? '') > (best.idleSince ?? ''))) {
      best = entry
      bestRank = entryRank
    }
  }
  return best
}

/** idle → leased: claim `entry` (chosen by `pickIdleToAdopt`) before anyone execs in it. `nextToken`: the store's fencing tokens, if it issues them. */
export function claimIdle(entry: LeaseEntry, key: string, actor: LeaseActor, now: number, nextToken?: () => number): LeaseEntry {
  if (nextToken) entry.token = nextToken()
  entry.state = 'leased'
  entry.owner = actor.owner
  entry.runId = actor.runId
  entry.key = key
  entry.updatedAt = iso(now)
  delete entry.idleSince
  delete entry.expiresAt
  delete entry.recoveredAt
  return entry
}

/** `pickIdleToAdopt`, then `claimIdle`. */
export function adoptIdle(table: LeaseTable, want: { provider: string; specHash: string; key: string }, actor: LeaseActor, now: number, nextToken?: () => number): LeaseEntry | undefined {
  const entry = pickIdleToAdopt(table, want, now)
  return entry && claimIdle(entry, want.key, actor, now, nextToken)
}

/**
 * leased → idle with a ttl (keepWarm). `undefined` when the entry is no longer ours (someone reclaimed it:
 * it is not ours to keep warm). `record` replaces the old one after a snapshot reset.
 */
export function markIdle(table: LeaseTable, name: string, actor: LeaseActor, options: { ttlMs: number; record?: VmRecord }, now: number): LeaseEntry | undefined {
  const entry = table[name]
  if (!entry || !isSameOwner(entry.owner, actor.owner)) return undefined
  entry.state = 'idle'
  entry.owner = null
  if (options.record) entry.record = options.record
  entry.runId = actor.runId
  delete entry.key
  entry.idleSince = iso(now)
  entry.expiresAt = iso(now + options.ttlMs)
  entry.updatedAt = iso(now)
  return entry
}

/** any → deleting, owned by `actor`: announced under the lock, the delete itself runs outside it. */
export function markDeleting(entry: LeaseEntry, actor: LeaseActor, now: number): void {
  entry.state = 'deleting'
  entry.owner = actor.owner
  entry.updatedAt = iso(now)
  delete entry.expiresAt
}

/** Announce the delete of `name` if the table knows it (a VM half-made by a failed create may have no entry). */
export function announceDelete(table: LeaseTable, name: string, actor: LeaseActor, now: number): void {
  const entry = table[name]
  if (entry) markDeleting(entry, actor, now)
}

/** deleting → (none) after the delete, only if still ours: someone may have taken it over meanwhile. */
export function dropIfStillOurs(table: LeaseTable, name: string, actor: LeaseActor): boolean {
  const entry = table[name]
  if (entry?.state !== 'deleting' || !isSameOwner(entry.owner, actor.owner)) return false
  delete table[name]
  return true
}

/** Leave a VM running without a lease (`FreshVm.keep()`): forget the entry if it is ours. */
export function releaseOwnership(table: LeaseTable, name: string, actor: LeaseActor): void {
  if (isSameOwner(table[name]?.owner ?? null, actor.owner)) delete table[name]
}

/** Idle VMs of `provider` beyond `max` (host-wide), oldest first → deleting. Returns their names. */
export function evictOverMax(table: LeaseTable, provider: string, max: number, actor: LeaseActor, now: number): string[] {
  const idle = Object.values(table)
    .filter((entry) => entry.state === 'idle' && entry.provider === provider)
    .sort((a, b) => ((a.idleSince ?? '') < (b.idleSince ?? '') ? 1 : -1))
  const over = idle.slice(max)
  for (const entry of over) markDeleting(entry, actor, now)
  return over.map((entry) => entry.name)
}

/**
 * The housekeeping every pool update does, so warm VMs stay bounded without a daemon: idle VMs past their
 * ttl and VMs whose holder died → deleting (by `actor`). Returns the names to delete outside the lock.
 */
export function sweepUnheld(table: LeaseTable, provider: string, actor: LeaseActor, liveness: OwnerLiveness, now: number): string[] {
  const names: string[] = []
  for (const entry of Object.values(table)) {
    if (entry.provider !== provider) continue
    if (isExpired(entry, now) || isOrphaned(entry, liveness, now)) {
      markDeleting(entry, actor, now)
      names.push(entry.name)
    }
  }
  return names
}

/**
 * Put back the entries this process holds when the table lost them: missing (the file was deleted),
 * rebuilt after corruption (`recoveredAt`), or older than our copy (a file restored from a backup or a CI
 * cache). Entries someone changed after us are left alone. Returns the names put back.
 */
export function restoreHeld(table: LeaseTable, held: Iterable<LeaseEntry>): string[] {
  const restored: string[] = []
  for (const mine of held) {
    // A fenced entry lives in a store that does not lose its table: gone or changed means someone took it (`findLostHolds`).
    if (mine.token !== undefined) continue
    const entry = table[mine.name]
    if (entry && entry.recoveredAt === undefined && Date.parse(entry.updatedAt) >= Date.parse(mine.updatedAt)) continue
    table[mine.name] = structuredClone(mine)
    restored.push(mine.name)
  }
  return restored
}

/**
 * Fencing: the held entries (our copies) that carry a token and are no longer ours in the table — gone,
 * another owner, or another token (we were judged dead, e.g. paused past our heartbeat TTL, and the VM was
 * reclaimed, maybe claimed again). Their holder must stop using them. Entries without a token are left to
 * `restoreHeld`.
 */
export function findLostHolds(table: LeaseTable, held: Iterable<LeaseEntry>, actor: LeaseActor): { name: string; reason: string }[] {
  const lost: { name: string; reason: string }[] = []
  for (const mine of held) {
    if (mine.token === undefined) continue
    const entry = table[mine.name]
    if (!entry) lost.push({ name: mine.name, reason: 'its lease is gone (reclaimed and deleted)' })
    else if (entry.token !== mine.token) lost.push({ name: mine.name, reason: `its fencing token is ${entry.token ?? 'none'} now, ours is ${mine.token}` })
    else if (!isSameOwner(entry.owner, actor.owner)) lost.push({ name: mine.name, reason: `it is ${entry.state} by ${entry.owner ? `pid ${entry.owner.pid} on ${entry.owner.host}` : 'nobody'} now` })
  }
  return lost
}

/**
 * gc: drop entries whose VM the provider did not list and that nobody alive holds — but only entries that
 * did not change since the listing started: a VM created (or released warm) while gc ran is missing from
 * that list although it exists.
 */
export function forgetVanished(table: LeaseTable, listing: { names: ReadonlySet<string>; startedAt: number }, liveness: OwnerLiveness, now: number): string[] {
  const forgotten: string[] = []
  for (const entry of Object.values(table)) {
    if (listing.names.has(entry.name) || Date.parse(entry.updatedAt) >= listing.startedAt) continue
    if (entry.state === 'idle' || isOrphaned(entry, liveness, now)) {
      delete table[entry.name]
      forgotten.push(entry.name)
    }
  }
  return forgotten
}

/**
 * The reaper (and gc for a dead owner's marker): what `deadOwner` held for `runId` — its entries that are
 * not idle, plus the names its marker listed — → deleting by `actor`. Skipped: idle (released warm) and
 * entries someone else holds now. Names without an entry are returned too (a VM whose entry was lost).
 */
export function selectReapTargets(table: LeaseTable, dead: { owner: LeaseOwner; runId: string; names?: readonly string[] }, actor: LeaseActor, now: number): string[] {
  const names = new Set(dead.names ?? [])
  for (const entry of Object.values(table)) {
    if (entry.state !== 'idle' && isSameOwner(entry.owner, dead.owner) && entry.runId === dead.runId) names.add(entry.name)
  }
  const chosen: string[] = []
  for (const name of names) {
    const entry = table[name]
    if (entry) {
      const ours = isSameOwner(entry.owner, dead.owner) || (entry.owner === null && entry.recoveredAt !== undefined)
      if (entry.state === 'idle' || !ours) continue
      markDeleting(entry, actor, now)
    }
    chosen.push(name)
  }
  return chosen
}

// ── gc ────────────────────────────────────────────────────────────────────────────────────────────

/**
 * After a corrupt lease file is rebuilt, owners are unknown until the holders' next lease update
 * re-registers them. gc keeps such VMs this long rather than risk deleting one a live run still uses.
 */
export const RECOVERED_LEASE_GRACE_MS = 10 * 60_000

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

/** What gc found out before it took the lock (all of it I/O: listing, markers, /proc, health checks). */
export interface GcFacts {
  /** When the provider listed the VM, if it says. */
  createdAt?: string
  /** The VM's name says who owns it (`judgeNamedOwner`), or null. */
  namedOwner: { alive: boolean; reason: string } | null
  /** A live owner's reaper marker names this VM: it holds it, whatever the table says (a lost or restored lease file). */
  liveMarker?: { owner: LeaseOwner; runId: string }
  /** The health check of an idle VM, with the `updatedAt` of the entry it checked. */
  health?: { updatedAt: string; error?: string }
}

/** One VM: keep or delete, and why. A VM a live owner holds is always kept, also with `--all`. */
export function decideGc(name: string, entry: LeaseEntry | undefined, facts: GcFacts, options: { olderThanMs?: number; all?: boolean }, liveness: OwnerLiveness, now: number): GcDecision {
  const lease = { ...(entry ? { lease: entry.state } : {}), ...(entry?.owner ? { ownerPid: entry.owner.pid } : {}) }
  const keep = (reason: string): GcDecision => ({ name, action: 'keep', reason, ...lease })
  const createdAt = Date.parse(entry?.createdAt ?? facts.createdAt ?? '')
  const age = Number.isFinite(createdAt) ? now - createdAt : Number.POSITIVE_INFINITY
  const tooYoung = (options.olderThanMs ?? 0) > 0 && age < options.olderThanMs!
  // --older-than only ever turns a delete into a keep; the reason says what would have happened.
  const remove = (reason: string): GcDecision => (tooYoung ? keep(`younger than --older-than (age ${formatDuration(age)}); otherwise: ${reason}`) : { name, action: 'delete', reason, ...lease })

  if (entry?.owner && isHeldByLiveOwner(entry, liveness, now)) return keep(`${entry.state} by live pid ${entry.owner.pid} on ${entry.owner.host} (run ${entry.runId})`)
  if (facts.liveMarker) return keep(`held by live pid ${facts.liveMarker.owner.pid} on ${facts.liveMarker.owner.host} (run ${facts.liveMarker.runId}): named by its reaper marker`)
  if (entry?.state === 'idle') {
    if (options.all) return remove('idle warm VM (--all)')
    if (isExpired(entry, now)) return remove(`idle warm VM past its ttl (expired ${formatDuration(now - Date.parse(entry.expiresAt!))} ago)`)
    if (!entry.record) return remove('idle warm VM without a connection record')
    // A health result counts only for the entry it checked: the VM may have been adopted and released since.
    if (facts.health && facts.health.updatedAt === entry.updatedAt) {
      if (facts.health.error) return remove(`idle warm VM failed its health check: ${facts.health.error}`)
      return keep(`healthy idle warm VM${entry.expiresAt ? ` (expires in ${formatDuration(Date.parse(entry.expiresAt) - now)})` : ''}; --all deletes it`)
    }
    return keep('idle warm VM (not checked: it changed while gc ran)')
  }
  if (entry?.owner === null) {
    const since = Date.parse(entry.recoveredAt ?? entry.updatedAt)
    if (now - since < RECOVERED_LEASE_GRACE_MS) return keep(`owner unknown since the lease file was rebuilt ${formatDuration(now - since)} ago; kept for ${formatDuration(RECOVERED_LEASE_GRACE_MS)} in case its holder is alive`)
    return remove(`owner unknown since the lease file was rebuilt ${formatDuration(now - since)} ago`)
  }
  if (entry?.owner) return remove(`holder pid ${entry.owner.pid} is gone (${entry.state}, run ${entry.runId})`)
  if (facts.namedOwner) return facts.namedOwner.alive ? keep(facts.namedOwner.reason) : remove(facts.namedOwner.reason)
  return remove('no lease: no live vm-pool process holds it')
}

/** gc, under the lock: every VM it decided to delete → deleting by gc. Returns their names. */
export function announceGcDeletes(table: LeaseTable, decisions: readonly GcDecision[], actor: LeaseActor, now: number): string[] {
  const names = decisions.filter((decision) => decision.action === 'delete').map((decision) => decision.name)
  for (const name of names) announceDelete(table, name, actor, now)
  return names
}

/** `vm-pool rm`'s verdict on one named VM. */
export interface RemoveDecision {
  name: string
  action: 'delete' | 'refuse' | 'missing'
  reason: string
}

/**
 * `vm-pool rm NAME`: delete exactly the named VM, unless a live process holds it (its lease, or its
 * reaper marker naming it) and `force` is off. A name neither the provider lists nor a lease knows is
 * `missing`. Called under the lock; `announceRemoves` marks the `delete` ones.
 */
export function decideRemove(name: string, entry: LeaseEntry | undefined, facts: { listed: boolean; liveMarker?: { owner: LeaseOwner } }, force: boolean, liveness: OwnerLiveness, now: number): RemoveDecision {
  if (!entry && !facts.listed) return { name, action: 'missing', reason: 'no such VM (neither the provider nor a lease knows it)' }
  const holder = entry && isHeldByLiveOwner(entry, liveness, now) ? entry.owner : facts.liveMarker?.owner
  if (holder && !force) return { name, action: 'refuse', reason: `held by live process ${holder.pid} on ${holder.host} (${entry?.state ?? 'in its reaper marker'}): --force deletes it anyway` }
  return { name, action: 'delete', reason: holder ? `held by live process ${holder.pid}, deleted with --force` : entry ? `lease ${entry.state}, no live holder` : 'no lease' }
}

/** Mark the `delete` decisions `deleting` by `actor` (entries that exist); returns the names to delete. */
export function announceRemoves(table: LeaseTable, decisions: readonly RemoveDecision[], actor: LeaseActor, now: number): string[] {
  const names = decisions.filter((decision) => decision.action === 'delete').map((decision) => decision.name)
  for (const name of names) announceDelete(table, name, actor, now)
  return names
}
