/**
 * The lease state machine (src/pool/lease-table.ts) on plain tables: no provider, no store, no processes.
 * Owners are judged by a liveness judge over a set of pids, and the clock is a number, so every transition
 * and every known race is a table in, a table out.
 */
import { describe, expect, test } from 'vitest'
import type { LeaseEntry, LeaseTable } from '../../src/pool/lease-store.js'
import {
  adoptIdle,
  claimIdle,
  announceDelete,
  announceGcDeletes,
  decideGc,
  dropIfStillOurs,
  evictOverMax,
  forgetVanished,
  isExpired,
  isHeldByLiveOwner,
  isOrphaned,
  markIdle,
  markLeased,
  pickIdleToAdopt,
  RECOVERED_LEASE_GRACE_MS,
  releaseOwnership,
  replaceRecord,
  reserveName,
  restoreHeld,
  selectReapTargets,
  sweepUnheld,
  type GcFacts,
  type LeaseActor,
} from '../../src/pool/lease-table.js'
import type { OwnerLiveness } from '../../src/pool/owner-liveness.js'
import type { VmRecord } from '../../src/providers/vm-provider.js'

const T0 = Date.parse('2030-01-01T00:00:00.000Z')
const at = (ms: number) => new Date(T0 + ms).toISOString()
const owner = (pid: number) => ({ pid, host: 'h', startTime: pid * 10 })
const A: LeaseActor = { owner: owner(1), runId: 'runa' }
const B: LeaseActor = { owner: owner(2), runId: 'runb' }
const GC: LeaseActor = { owner: owner(9), runId: 'gc' }
const DEAD = owner(66)
/** Alive: A, B, gc. Everyone else is dead. */
const liveness: OwnerLiveness = { isAlive: (o) => [1, 2, 9].includes(o.pid) && o.startTime === o.pid * 10 }
const record = (name: string): VmRecord => ({ name, provider: 'fake', createdAt: at(0), spec: { name }, data: {} })

function entry(name: string, overrides: Partial<LeaseEntry> = {}): LeaseEntry {
  return { name, provider: 'fake', specHash: 'spec1', kind: 'slot', state: 'leased', owner: A.owner, runId: A.runId, record: record(name), createdAt: at(0), updatedAt: at(0), ...overrides }
}
function idle(name: string, idleAtMs: number, overrides: Partial<LeaseEntry> = {}): LeaseEntry {
  return entry(name, { state: 'idle', owner: null, idleSince: at(idleAtMs), expiresAt: at(idleAtMs + 60_000), updatedAt: at(idleAtMs), ...overrides })
}
const tableOf = (...entries: LeaseEntry[]): LeaseTable => Object.fromEntries(entries.map((e) => [e.name, e]))

describe('judgements', () => {
  test.each([
    ['idle before its expiry', idle('x', 0), 59_999, { expired: false, orphaned: false, held: false }],
    ['idle at its expiry', idle('x', 0), 60_000, { expired: true, orphaned: false, held: false }],
    ['idle without expiresAt', idle('x', 0, { expiresAt: undefined }), 10 ** 9, { expired: false, orphaned: false, held: false }],
    ['leased by a live owner', entry('x'), 0, { expired: false, orphaned: false, held: true }],
    ['leased by a dead owner', entry('x', { owner: DEAD }), 0, { expired: false, orphaned: true, held: false }],
    ['booting by a dead owner', entry('x', { state: 'booting', owner: DEAD }), 0, { expired: false, orphaned: true, held: false }],
    ['deleting by a live owner', entry('x', { state: 'deleting', owner: B.owner }), 0, { expired: false, orphaned: false, held: true }],
    ['pid reused (same pid, other start time)', entry('x', { owner: { ...A.owner, startTime: 1 } }), 0, { expired: false, orphaned: true, held: false }],
    ['rebuilt, owner unknown', entry('x', { owner: null, recoveredAt: at(0) }), 0, { expired: false, orphaned: false, held: false }],
  ])('%s', (_label, e, nowMs, expected) => {
    const now = T0 + nowMs
    expect({ expired: isExpired(e, now), orphaned: isOrphaned(e, liveness, now), held: isHeldByLiveOwner(e, liveness, now) }).toEqual(expected)
  })
})

describe('transitions', () => {
  test('reserveName: (none) → booting by the actor; a taken name gets -2, -3; an exact name that is taken is refused', () => {
    const table: LeaseTable = {}
    const request = { base: 'vitest-worker-runa-1', exactName: false, provider: 'fake', specHash: 'spec1', kind: 'slot' as const, key: '1' }
    expect(reserveName(table, request, A, T0)).toMatchObject({ name: 'vitest-worker-runa-1', state: 'booting', owner: A.owner, runId: 'runa', key: '1', createdAt: at(0) })
    expect(reserveName(table, request, A, T0)?.name).toBe('vitest-worker-runa-1-2')
    expect(reserveName(table, request, B, T0)?.name).toBe('vitest-worker-runa-1-3')
    expect(reserveName(table, { ...request, exactName: true }, A, T0)).toBeUndefined()
    expect(Object.keys(table)).toHaveLength(3)
  })

  test('markLeased: booting → leased with the record; recreated from the reservation if the table lost it', () => {
    const reserved = entry('x', { state: 'booting', record: undefined, recoveredAt: at(0) })
    const table = tableOf(structuredClone(reserved))
    expect(markLeased(table, reserved, record('x'), A, T0 + 5)).toMatchObject({ state: 'leased', owner: A.owner, record: { name: 'x' }, updatedAt: at(5) })
    expect(table.x!.recoveredAt).toBeUndefined()
    const lost: LeaseTable = {}
    markLeased(lost, reserved, record('x'), A, T0 + 5)
    expect(lost.x).toMatchObject({ state: 'leased', owner: A.owner })
  })

  test('pickIdleToAdopt / adoptIdle: the most recently idle VM of the same provider and spec, unexpired, with a record', () => {
    const table = tableOf(
      idle('old', 0),
      idle('newest', 20),
      idle('expired', -70_000),
      idle('other-spec', 30, { specHash: 'spec2' }),
      idle('other-provider', 30, { provider: 'qemu' }),
      idle('no-record', 30, { record: undefined }),
      entry('leased'),
    )
    const want = { provider: 'fake', specHash: 'spec1' }
    expect(pickIdleToAdopt(table, want, T0 + 100)?.name).toBe('newest')
    const adopted = adoptIdle(table, { ...want, key: 'k' }, B, T0 + 100)
    expect(adopted).toMatchObject({ name: 'newest', state: 'leased', owner: B.owner, runId: 'runb', key: 'k', updatedAt: at(100) })
    expect(adopted).not.toHaveProperty('idleSince')
    expect(adopted).not.toHaveProperty('expiresAt')
    expect(adoptIdle(table, { ...want, key: 'k2' }, B, T0 + 100)?.name).toBe('old')
    expect(adoptIdle(table, { ...want, key: 'k3' }, B, T0 + 100)).toBeUndefined()
  })

  test('pickIdleToAdopt with a rank: the highest rank first, then the most recently idle; claimIdle claims that one', () => {
    const table = tableOf(idle('old', 0), idle('mine', 10), idle('newest', 20), idle('newer', 15))
    const want = { provider: 'fake', specHash: 'spec1' }
    const ranks: Record<string, number> = { mine: 2, old: -0.5, newest: -0.9, newer: 1 }
    expect(pickIdleToAdopt(table, want, T0 + 100, (candidate) => ranks[candidate.name]!)?.name).toBe('mine')
    delete ranks.mine
    table.mine!.state = 'leased'
    expect(pickIdleToAdopt(table, want, T0 + 100, (candidate) => ranks[candidate.name]!)?.name).toBe('newer')
    // Equal ranks: the most recently idle, as without a rank.
    expect(pickIdleToAdopt(table, want, T0 + 100, () => 0)?.name).toBe('newest')
    const chosen = pickIdleToAdopt(table, want, T0 + 100, (candidate) => (candidate.name === 'old' ? 1 : 0))!
    expect(claimIdle(chosen, 'k', B, T0 + 100, () => 7)).toMatchObject({ name: 'old', state: 'leased', owner: B.owner, key: 'k', token: 7 })
    expect(table.old).not.toHaveProperty('idleSince')
  })

  test('a rebuilt entry (owner unknown) is never adopted: it is not idle', () => {
    const table = tableOf(entry('x', { owner: null, recoveredAt: at(0) }))
    expect(adoptIdle(table, { provider: 'fake', specHash: 'spec1', key: 'k' }, A, T0)).toBeUndefined()
  })

  test('markIdle: ours → idle with a ttl, key dropped, record replaced; not ours → nothing changes', () => {
    const table = tableOf(entry('x', { key: 'k' }), entry('theirs', { owner: B.owner }))
    expect(markIdle(table, 'x', A, { ttlMs: 1_000, record: { ...record('x'), data: { port: 2 } } }, T0 + 10)).toMatchObject({
      state: 'idle',
      owner: null,
      runId: 'runa',
      idleSince: at(10),
      expiresAt: at(1_010),
      record: { data: { port: 2 } },
    })
    expect(table.x).not.toHaveProperty('key')
    const before = structuredClone(table.theirs)
    expect(markIdle(table, 'theirs', A, { ttlMs: 1_000 }, T0)).toBeUndefined()
    expect(markIdle(table, 'missing', A, { ttlMs: 1_000 }, T0)).toBeUndefined()
    expect(table.theirs).toEqual(before)
  })

  test('replaceRecord (lease.reset()): ours → still leased by us, new record and updatedAt; not ours → nothing changes', () => {
    const table = tableOf(entry('x', { key: 'k' }), entry('theirs', { owner: B.owner }))
    expect(replaceRecord(table, 'x', { ...record('x'), data: { port: 3 } }, A, T0 + 5)).toMatchObject({ state: 'leased', owner: A.owner, key: 'k', updatedAt: at(5), record: { data: { port: 3 } } })
    const before = structuredClone(table.theirs)
    expect(replaceRecord(table, 'theirs', record('theirs'), A, T0 + 5)).toBeUndefined()
    expect(replaceRecord(table, 'missing', record('missing'), A, T0 + 5)).toBeUndefined()
    expect(table.theirs).toEqual(before)
  })

  test('announceDelete → deleting by the actor; dropIfStillOurs drops only a deleting entry that is still ours', () => {
    const table = tableOf(idle('x', 0), entry('y'))
    announceDelete(table, 'x', A, T0 + 1)
    announceDelete(table, 'no-entry', A, T0 + 1)
    expect(table.x).toMatchObject({ state: 'deleting', owner: A.owner, updatedAt: at(1) })
    expect(table.x).not.toHaveProperty('expiresAt')
    expect(dropIfStillOurs(table, 'x', B)).toBe(false)
    expect(dropIfStillOurs(table, 'y', A)).toBe(false) // ours, but not deleting
    expect(dropIfStillOurs(table, 'x', A)).toBe(true)
    expect(Object.keys(table)).toEqual(['y'])
  })

  test('releaseOwnership (FreshVm.keep): forgets our entry, never someone else’s', () => {
    const table = tableOf(entry('ours'), entry('theirs', { owner: B.owner }))
    releaseOwnership(table, 'ours', A)
    releaseOwnership(table, 'theirs', A)
    expect(Object.keys(table)).toEqual(['theirs'])
  })

  test('evictOverMax: idle VMs of the provider beyond max, oldest first → deleting', () => {
    const table = tableOf(idle('a', 1), idle('b', 2), idle('c', 3), idle('q', 0, { provider: 'qemu' }), entry('held'))
    expect(evictOverMax(table, 'fake', 1, A, T0).sort()).toEqual(['a', 'b'])
    expect(table.c!.state).toBe('idle')
    expect(table.q!.state).toBe('idle')
    expect(table.a).toMatchObject({ state: 'deleting', owner: A.owner })
  })

  test('sweepUnheld (every pool update): expired idle and dead holders → deleting by the actor; nothing else', () => {
    const table = tableOf(
      idle('expired', -70_000),
      idle('fresh-idle', 0),
      entry('dead-holder', { owner: DEAD }),
      entry('dead-booting', { state: 'booting', owner: DEAD }),
      entry('live-holder', { owner: B.owner }),
      entry('deleting-by-live', { state: 'deleting', owner: B.owner }),
      entry('rebuilt', { owner: null, recoveredAt: at(0) }),
      entry('other-provider-dead', { provider: 'qemu', owner: DEAD }),
    )
    expect(sweepUnheld(table, 'fake', A, liveness, T0).sort()).toEqual(['dead-booting', 'dead-holder', 'expired'])
    for (const name of ['expired', 'dead-holder', 'dead-booting']) expect(table[name]).toMatchObject({ state: 'deleting', owner: A.owner })
    expect(table['deleting-by-live']!.owner).toEqual(B.owner)
  })

  test.each([
    ['missing (the file was deleted)', undefined, true],
    ['rebuilt from a corrupt file (owner unknown)', entry('x', { owner: null, recoveredAt: at(50), updatedAt: at(50) }), true],
    ['rebuilt, owner taken from our reaper marker', entry('x', { recoveredAt: at(50), updatedAt: at(50) }), true],
    ['older than our copy (a file restored from a backup)', idle('x', -5_000), true],
    ['our copy, unchanged', entry('x', { updatedAt: at(10) }), false],
    ['changed after us (gc marked it deleting)', entry('x', { state: 'deleting', owner: GC.owner, updatedAt: at(20) }), false],
  ])('restoreHeld: an entry we hold that is %s → restored: %s', (_label, current, restored) => {
    const mine = entry('x', { updatedAt: at(10), key: 'k' })
    const table: LeaseTable = current ? { x: structuredClone(current) } : {}
    expect(restoreHeld(table, [mine])).toEqual(restored ? ['x'] : [])
    expect(table.x).toEqual(restored ? mine : current)
  })

  test('selectReapTargets: what a dead owner held for its run, plus its marker names; never idle or taken-over VMs', () => {
    const dead = { owner: DEAD, runId: 'rund' }
    const table = tableOf(
      entry('leased', { owner: DEAD, runId: 'rund' }),
      entry('booting', { state: 'booting', owner: DEAD, runId: 'rund' }),
      entry('deleting', { state: 'deleting', owner: DEAD, runId: 'rund' }),
      entry('other-run', { owner: DEAD, runId: 'other' }),
      idle('released-warm', 0, { runId: 'rund' }),
      entry('taken-over', { owner: B.owner, runId: 'runb' }),
      entry('rebuilt', { owner: null, recoveredAt: at(0) }),
    )
    const names = selectReapTargets(table, { ...dead, names: ['released-warm', 'taken-over', 'rebuilt', 'no-entry'] }, GC, T0)
    expect(names.sort()).toEqual(['booting', 'deleting', 'leased', 'no-entry', 'rebuilt'])
    for (const name of ['booting', 'deleting', 'leased', 'rebuilt']) expect(table[name]).toMatchObject({ state: 'deleting', owner: GC.owner })
    expect(table['other-run']!.owner).toEqual(DEAD)
    expect(table['released-warm']!.state).toBe('idle')
    expect(table['taken-over']!.owner).toEqual(B.owner)
  })
})

describe('gc decisions', () => {
  const facts = (overrides: Partial<GcFacts> = {}): GcFacts => ({ namedOwner: null, ...overrides })
  const liveMarker = { owner: B.owner, runId: 'runb' }
  test.each<[string, LeaseEntry | undefined, GcFacts, { olderThanMs?: number; all?: boolean }, number, 'keep' | 'delete', RegExp]>([
    ['held by a live owner (also with --all)', entry('x'), facts(), { all: true }, 0, 'keep', /^leased by live pid 1 on h \(run runa\)$/],
    ['deleting by a live owner', entry('x', { state: 'deleting', owner: B.owner }), facts(), {}, 0, 'keep', /^deleting by live pid 2/],
    ['no lease, but a live owner’s marker names it (lease file deleted)', undefined, facts({ liveMarker }), { all: true }, 0, 'keep', /^held by live pid 2 on h \(run runb\): named by its reaper marker$/],
    ['a dead owner’s lease, but a live marker names it (an old lease file restored)', entry('x', { owner: DEAD }), facts({ liveMarker }), {}, 0, 'keep', /named by its reaper marker/],
    ['idle with --all', idle('x', 0), facts(), { all: true }, 0, 'delete', /^idle warm VM \(--all\)$/],
    ['idle past its ttl', idle('x', 0), facts(), {}, 61_000, 'delete', /^idle warm VM past its ttl \(expired 1s ago\)$/],
    ['idle, checked healthy', idle('x', 0), facts({ health: { updatedAt: at(0) } }), {}, 1_000, 'keep', /^healthy idle warm VM \(expires in 59s\); --all deletes it$/],
    ['idle, failed its check', idle('x', 0), facts({ health: { updatedAt: at(0), error: 'boom' } }), {}, 1_000, 'delete', /^idle warm VM failed its health check: boom$/],
    ['idle without a record', idle('x', 0, { record: undefined }), facts(), {}, 1_000, 'delete', /without a connection record/],
    ['rebuilt, within the grace period', entry('x', { owner: null, recoveredAt: at(0) }), facts(), {}, RECOVERED_LEASE_GRACE_MS - 1_000, 'keep', /^owner unknown since the lease file was rebuilt/],
    ['rebuilt, past the grace period', entry('x', { owner: null, recoveredAt: at(0) }), facts(), {}, RECOVERED_LEASE_GRACE_MS, 'delete', /^owner unknown since the lease file was rebuilt 10m ago$/],
    ['holder dead', entry('x', { owner: DEAD }), facts(), {}, 0, 'delete', /^holder pid 66 is gone \(leased, run runa\)$/],
    ['no lease, the name says its owner is alive', undefined, facts({ namedOwner: { alive: true, reason: 'pytest worker pid 5 is alive' } }), {}, 0, 'keep', /^pytest worker pid 5 is alive$/],
    ['no lease, the name says its owner is gone', undefined, facts({ namedOwner: { alive: false, reason: 'pytest worker pid 5 is gone' } }), {}, 0, 'delete', /^pytest worker pid 5 is gone$/],
    ['no lease, nothing else known', undefined, facts(), {}, 0, 'delete', /^no lease: no live vm-pool process holds it$/],
    ['--older-than turns a delete into a keep', entry('x', { owner: DEAD }), facts(), { olderThanMs: 60_000 }, 30_000, 'keep', /^younger than --older-than \(age 30s\); otherwise: holder pid 66 is gone/],
  ])('%s', (_label, e, f, options, nowMs, action, reason) => {
    const decision = decideGc('x', e, f, options, liveness, T0 + nowMs)
    expect(decision.action).toBe(action)
    expect(decision.reason).toMatch(reason)
  })

  test('announceGcDeletes marks exactly the deletes, by gc', () => {
    const table = tableOf(entry('gone', { owner: DEAD }), entry('live'))
    const decisions = ['gone', 'live', 'no-entry'].map((name) => decideGc(name, table[name], facts(), {}, liveness, T0))
    expect(announceGcDeletes(table, decisions, GC, T0).sort()).toEqual(['gone', 'no-entry'])
    expect(table.gone).toMatchObject({ state: 'deleting', owner: GC.owner })
    expect(table.live!.owner).toEqual(A.owner)
  })
})

describe('races', () => {
  test('gc lists VMs before it takes the lock: a VM created and released warm meanwhile is neither judged nor forgotten', () => {
    const listing = { names: new Set(['old-idle-listed']), startedAt: T0 }
    const table = tableOf(idle('old-idle-listed', -10_000), idle('vanished-idle', -10_000), entry('vanished-dead', { owner: DEAD, updatedAt: at(-10_000) }))
    // After the listing: a pool reserves, boots and releases a VM warm; another reserves one and is still booting.
    const reserved = reserveName(table, { base: 'new-warm', exactName: false, provider: 'fake', specHash: 'spec1', kind: 'slot' }, A, T0 + 5)!
    markLeased(table, reserved, record('new-warm'), A, T0 + 6)
    markIdle(table, 'new-warm', A, { ttlMs: 60_000 }, T0 + 7)
    reserveName(table, { base: 'new-booting', exactName: false, provider: 'fake', specHash: 'spec1', kind: 'slot' }, B, T0 + 8)
    // gc takes the lock.
    expect(forgetVanished(table, listing, liveness, T0 + 9).sort()).toEqual(['vanished-dead', 'vanished-idle'])
    expect(Object.keys(table).sort()).toEqual(['new-booting', 'new-warm', 'old-idle-listed'])
  })

  test('gc forgets an entry changed in the very millisecond its listing started: no (it may be newer than the list)', () => {
    const table = tableOf(idle('x', 0))
    expect(forgetVanished(table, { names: new Set(), startedAt: T0 }, liveness, T0 + 1)).toEqual([])
  })

  test('a VM released warm while gc runs: gc keeps it (its health check was for another version of the entry)', () => {
    // gc read the table: the VM was leased (no health check) — or idle and checked, then adopted and released again.
    for (const health of [undefined, { updatedAt: at(0), error: 'stale failure' }]) {
      const table = tableOf(entry('x', { key: 'k', updatedAt: at(0) }))
      markIdle(table, 'x', A, { ttlMs: 60_000 }, T0 + 50)
      const decision = decideGc('x', table.x, { namedOwner: null, ...(health ? { health } : {}) }, {}, liveness, T0 + 60)
      expect(decision).toMatchObject({ action: 'keep', reason: 'idle warm VM (not checked: it changed while gc ran)' })
    }
  })

  test('an idle VM gc checked healthy is adopted before gc takes the lock: kept as held by a live owner', () => {
    const table = tableOf(idle('x', 0))
    adoptIdle(table, { provider: 'fake', specHash: 'spec1', key: 'k' }, B, T0 + 10)
    expect(decideGc('x', table.x, { namedOwner: null, health: { updatedAt: at(0) } }, { all: true }, liveness, T0 + 20).action).toBe('keep')
  })

  test('a holder that died: the first to see it announces the delete; pools, gc and its reaper then leave it alone', () => {
    const table = tableOf(entry('x', { owner: DEAD, runId: 'rund' }))
    expect(sweepUnheld(table, 'fake', B, liveness, T0)).toEqual(['x'])
    // B is deleting it now: nobody else may.
    expect(sweepUnheld(table, 'fake', A, liveness, T0 + 1)).toEqual([])
    expect(selectReapTargets(table, { owner: DEAD, runId: 'rund' }, GC, T0 + 1)).toEqual([])
    expect(decideGc('x', table.x, { namedOwner: null }, { all: true }, liveness, T0 + 1)).toMatchObject({ action: 'keep', reason: expect.stringMatching(/^deleting by live pid 2/) })
    expect(dropIfStillOurs(table, 'x', A)).toBe(false)
    expect(dropIfStillOurs(table, 'x', B)).toBe(true)
  })

  test('a deleter that died mid-delete: its `deleting` entry is an orphan, and the next one retries', () => {
    const table = tableOf(entry('x', { state: 'deleting', owner: DEAD }))
    expect(sweepUnheld(table, 'fake', A, liveness, T0)).toEqual(['x'])
    expect(table.x).toMatchObject({ state: 'deleting', owner: A.owner })
  })

  test('a lease rebuilt from a corrupt file: not adoptable, not swept, kept by gc for the grace period, put back by its holder', () => {
    const mine = entry('x', { key: 'k', updatedAt: at(0) })
    const table = tableOf(entry('x', { owner: null, runId: 'unknown', recoveredAt: at(100), updatedAt: at(100) }))
    expect(adoptIdle(table, { provider: 'fake', specHash: 'spec1', key: 'other' }, B, T0 + 200)).toBeUndefined()
    expect(sweepUnheld(table, 'fake', B, liveness, T0 + 200)).toEqual([])
    expect(decideGc('x', table.x, { namedOwner: null }, {}, liveness, T0 + 200).action).toBe('keep')
    restoreHeld(table, [mine])
    expect(table.x).toEqual(mine)
  })
})
