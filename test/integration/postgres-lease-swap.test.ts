/**
 * The warm cycle on PostgreSQL (docs/pool.md, "The warm cycle"), on a real cluster (test/helpers/postgres.ts):
 * a swap changes one row only while it still holds the expected entry, a claim takes a fresh token and needs a
 * fresh heartbeat, a locked update neither blocks swaps nor overwrites what one wrote (it runs again), the sweep
 * is handed to one swap per interval, a schema 1 database is migrated, and a pool's warm cycle writes one row per
 * step (no locked update, no reaper marker) and survives PostgreSQL restarting under it.
 */
import { readFileSync } from 'node:fs'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import type { LeaseEntry, LeaseStore, LeaseUpdateContext } from '../../src/pool/lease-store.js'
import { PostgresLeaseStore } from '../../src/pool/postgres-lease-store.js'
import { createPool } from '../../src/pool/vm-pool.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { getCurrentProcessIdentity } from '../../src/util/process-info.js'
import { makeStateDir } from '../../fixtures/pool/harness.js'
import { makeEntry } from '../contract/lease-store-contract.js'
import { getPostgresSkipReason, startPostgres, type StartedPostgres } from '../helpers/postgres.js'

const skipReason = getPostgresSkipReason()

describe.skipIf(skipReason !== undefined)(`PostgreSQL swaps${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let server: StartedPostgres
  let databases = 0
  const stores: PostgresLeaseStore[] = []
  beforeAll(async () => {
    server = await startPostgres()
  }, 120_000)
  afterAll(async () => {
    // Bounded: a store stuck behind a lock must not keep the cluster running.
    await Promise.race([Promise.all(stores.map((store) => store.close())), new Promise((resolve) => setTimeout(resolve, 5_000))])
    server?.stop()
  })

  /** Two stores on one new database (two processes' views); each has run an update, so it has a clock and a heartbeat. */
  async function open(): Promise<{ url: string; database: string; first: PostgresLeaseStore; second: PostgresLeaseStore }> {
    const database = `swap_${++databases}`
    const url = await server.createDatabase(database)
    const [first, second] = [new PostgresLeaseStore({ connectionString: url, namespace: 'fake' }), new PostgresLeaseStore({ connectionString: url, namespace: 'fake' })]
    stores.push(first, second)
    await first.update(() => undefined)
    await second.update(() => undefined)
    return { url, database, first, second }
  }

  const me = getCurrentProcessIdentity()
  const leased = (entry: LeaseEntry, key: string): LeaseEntry => ({ ...structuredClone(entry), state: 'leased', owner: me, key })

  test('a swap writes one row only while it holds the expected entry; a claim takes a fresh token and needs a fresh heartbeat', async () => {
    const { first, second, database } = await open()
    const issued = await first.update((table, context) => {
      table.a = makeEntry('a', { token: context.nextToken!() })
      return table.a.token!
    })
    const idle = (await second.read()).a!
    const claimed = await second.swap.entry({ name: 'a', expected: idle, next: leased(idle, 'k'), claim: true })
    if (typeof claimed !== 'object') throw new Error(`the claim was ${claimed}`)
    expect(claimed.written.token).toBeGreaterThan(issued)
    expect((await first.read()).a).toEqual(claimed.written)
    // The expected entry is stale now: declined, and the row is left as it is.
    expect(await first.swap.entry({ name: 'a', expected: idle, next: leased(idle, 'other'), claim: true })).toBe('declined')
    expect(await first.swap.entry({ name: 'a', expected: idle, next: { ...idle, runId: 'r2' } })).toBe('declined')
    expect((await first.read()).a).toEqual(claimed.written)
    // Without a fresh heartbeat of ours, no claim is written (other hosts could judge its owner dead at once).
    const back = await second.swap.entry({ name: 'a', expected: claimed.written, next: { ...claimed.written, state: 'idle', owner: null } })
    if (typeof back !== 'object') throw new Error(`the hand-back was ${back}`)
    await server.sql(database, 'DELETE FROM vm_pool_heartbeats')
    expect(await second.swap.entry({ name: 'a', expected: back.written, next: leased(back.written, 'k'), claim: true })).toBe('declined')
    expect((await first.read()).a?.state).toBe('idle')
  })

  test('a locked update does not hold up swaps, and one whose row a swap changed runs again on the new row', async () => {
    const { first, second } = await open()
    await first.update((table) => {
      table.a = makeEntry('a', { key: 'start' })
      table.b = makeEntry('b')
    })
    let runs = 0
    let openGate!: () => void
    const gate = new Promise<void>((resolve) => (openGate = resolve))
    let entered!: () => void
    const inside = new Promise<void>((resolve) => (entered = resolve))
    const update = first.update(async (table) => {
      runs++
      if (runs === 1) {
        entered()
        await gate
      }
      table.a!.key = `${table.a!.key}+update`
    })
    await inside
    // The update holds the namespace's lock and has loaded both rows: swaps of either go through meanwhile.
    const before = await second.read()
    const swaps = Promise.all([
      second.swap.entry({ name: 'b', expected: before.b!, next: { ...before.b!, runId: 'swapped' } }),
      second.swap.entry({ name: 'a', expected: before.a!, next: { ...before.a!, key: 'swap' } }),
    ])
    const finished = await Promise.race([swaps.then(() => true), new Promise((resolve) => setTimeout(() => resolve(false), 10_000))])
    expect(finished).toBe(true)
    openGate()
    await update
    // Its write of `a` found the row changed: it ran again on the swapped row instead of overwriting it.
    expect(runs).toBe(2)
    const after = await first.read()
    expect(after.a!.key).toBe('swap+update')
    expect(after.b!.runId).toBe('swapped')
  })

  test('the housekeeping sweep goes to one swap per interval; an update that swept counts', async () => {
    const { first, second } = await open()
    await first.update((table) => {
      table.a = makeEntry('a')
      table.b = makeEntry('b')
    })
    const touch = async (store: PostgresLeaseStore, name: string, sweepEveryMs?: number) => {
      const current = (await store.read())[name]!
      const result = await store.swap.entry({ name, expected: current, next: { ...current, runId: `${current.runId}.` }, ...(sweepEveryMs === undefined ? {} : { sweepEveryMs }) })
      if (typeof result !== 'object') throw new Error(`the swap was ${result}`)
      return result.sweepDue === true
    }
    // No sweep recorded yet: the first swap that asks gets it, and nobody else for the interval.
    expect(await touch(first, 'a', 60_000)).toBe(true)
    expect(await touch(second, 'b', 60_000)).toBe(false)
    expect(await touch(first, 'a', 60_000)).toBe(false)
    // Swaps that do not ask never get it.
    expect(await touch(second, 'b')).toBe(false)
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(await touch(second, 'b', 200)).toBe(true)
    await second.update((_table, context: LeaseUpdateContext) => context.swept?.())
    expect(await touch(first, 'a', 200)).toBe(false)
    // A swap that is declined (its row changed) leaves the duty to the next one that writes.
    await new Promise((resolve) => setTimeout(resolve, 300))
    const stale = (await first.read()).a!
    await touch(second, 'a')
    expect(await first.swap.entry({ name: 'a', expected: stale, next: { ...stale, runId: 'late' }, sweepEveryMs: 200 })).toBe('declined')
    expect(await touch(second, 'b', 200)).toBe(true)
  })

  test('a store keeps one connection: a heartbeat that comes while a swap is in flight waits for it', async () => {
    const database = `swap_${++databases}`
    const url = await server.createDatabase(database)
    // A beat every 2 ms: many of them come while a swap is out.
    const store = new PostgresLeaseStore({ connectionString: url, namespace: 'fake', heartbeatIntervalMs: 2 })
    stores.push(store)
    let entry = await store.update((table, context) => {
      table.a = makeEntry('a', { token: context.nextToken!() })
      return structuredClone(table.a)
    })
    const beats = async () => (await server.sql(database, 'SELECT beat_at::text AS at FROM vm_pool_heartbeats')).rows.map((row) => row.at as string)
    const firstBeat = await beats()
    for (let i = 0; i < 100; i++) {
      const claimed = await store.swap.entry({ name: 'a', expected: entry, next: leased(entry, 'k'), claim: true })
      if (typeof claimed !== 'object') throw new Error(`claim ${i} was ${claimed}`)
      const back = await store.swap.entry({ name: 'a', expected: claimed.written, next: { ...claimed.written, state: 'idle', owner: null } })
      if (typeof back !== 'object') throw new Error(`hand-back ${i} was ${back}`)
      entry = back.written
    }
    expect(await beats()).not.toEqual(firstBeat)
    const { rows } = await server.sql(database, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = '${database}' AND application_name = 'vm-pool'`)
    expect(rows[0].n).toBe(1)
    await store.close()
  })

  test('a busy process’s heartbeat rides on its swaps: no beat of its own in the cycle; an idle one beats by its timer', async () => {
    const database = `swap_${++databases}`
    const url = await server.createDatabase(database)
    // Its TTL tells its timer's beats from those of the other stores this file has open.
    const TTL = 29_999
    const store = new PostgresLeaseStore({ connectionString: url, namespace: 'fake', heartbeatIntervalMs: 1_000, heartbeatTtlMs: TTL })
    stores.push(store)
    let entry = await store.update((table, context) => {
      table.a = makeEntry('a', { token: context.nextToken!() })
      return structuredClone(table.a)
    })
    // The timer's beats are the store's only plain heartbeat statements (swaps carry theirs in the swap's SQL).
    let timerBeats = 0
    // On the client: every statement goes through it, whether sent by pool.query or on a checked-out client.
    const query = pg.Client.prototype.query
    pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
      if (typeof args[0] === 'string' && args[0].includes('INSERT INTO vm_pool_heartbeats') && (args[1] as unknown[] | undefined)?.[3] === TTL) timerBeats++
      return (query as (...a: unknown[]) => unknown).apply(this, args)
    } as typeof query
    try {
      let confirmations = 0
      let since = store.heartbeat.sinceConfirmedMs()
      const started = performance.now()
      while (performance.now() - started < 3_000) {
        const claimed = await store.swap.entry({ name: 'a', expected: entry, next: leased(entry, 'k'), claim: true })
        if (typeof claimed !== 'object') throw new Error(`the claim was ${claimed}`)
        const back = await store.swap.entry({ name: 'a', expected: claimed.written, next: { ...claimed.written, state: 'idle', owner: null } })
        if (typeof back !== 'object') throw new Error(`the hand-back was ${back}`)
        entry = back.written
        const now = store.heartbeat.sinceConfirmedMs()
        if (now < since) confirmations++
        since = now
      }
      // A beat is due every half interval: ~6 in 3 s, carried by swaps; the timer (every second) found none due,
      // but for one that came in the few ms between a beat falling due and the next swap.
      expect(timerBeats).toBeLessThanOrEqual(1)
      expect(confirmations - timerBeats).toBeGreaterThanOrEqual(4)
      // Idle, the timer beats.
      await new Promise((resolve) => setTimeout(resolve, 2_200))
      expect(timerBeats).toBeGreaterThanOrEqual(1)
      expect(store.heartbeat.sinceConfirmedMs()).toBeLessThan(1_500)
    } finally {
      pg.Client.prototype.query = query
    }
  })

  test('a schema 1 database is migrated: fencing tokens go on above its counter', async () => {
    const { url, database, first } = await open()
    // Back to what schema 1 had: the counter in vm_pool_tables, no sequence, no swept_at.
    await server.sql(
      database,
      `DROP SEQUENCE vm_pool_tokens; DROP FUNCTION vm_pool_expect_rows(bigint, bigint); ALTER TABLE vm_pool_tables DROP COLUMN swept_at;
       UPDATE vm_pool_tables SET next_token = 5000; UPDATE vm_pool_schema SET version = 1`,
    )
    await first.close()
    const migrated = new PostgresLeaseStore({ connectionString: url, namespace: 'fake' })
    stores.push(migrated)
    const token = await migrated.update((table, context) => {
      table.a = makeEntry('a', { token: context.nextToken!() })
      return table.a.token!
    })
    expect(token).toBeGreaterThanOrEqual(5000)
    expect((await server.sql(database, 'SELECT version FROM vm_pool_schema')).rows).toEqual([{ version: 2 }])
  })

  test('a pool’s warm cycle writes one row per step: no locked update, no reaper marker write', async () => {
    const { url } = await open()
    const state = makeStateDir()
    const store = new PostgresLeaseStore({ connectionString: url, namespace: 'fake' })
    stores.push(store)
    const counts = { update: 0, swap: 0 }
    const update = store.update.bind(store)
    store.update = ((mutate: Parameters<LeaseStore['update']>[0]) => {
      counts.update++
      return update(mutate)
    }) as LeaseStore['update']
    const swap = store.swap.entry
    store.swap.entry = (request, then) => {
      counts.swap++
      return swap(request, then)
    }
    const pool = createPool({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir, leaseStore: store, keepWarm: { ttlMs: 600_000, max: 2 }, reaper: { providerName: 'fake', providerOptions: { stateDir: state.dir } } })
    try {
      const first = await pool.acquire('k')
      await first.release()
      const marker = () => readFileSync(`${state.dir}/reapers/${pool.runId}-${process.pid}.json`, 'utf8')
      await new Promise((resolve) => setImmediate(resolve))
      const markerBefore = marker()
      expect(JSON.parse(markerBefore).names).toEqual([first.name])
      const updatesBefore = counts.update
      const started = performance.now()
      for (let i = 0; i < 10; i++) {
        const lease = await pool.acquire('k')
        expect(lease.name).toBe(first.name)
        await lease.release()
      }
      await new Promise((resolve) => setImmediate(resolve))
      // 20 swaps; a locked update only for the shared sweep, at most once per started second (SWEEP_INTERVAL_MS).
      expect(counts.swap).toBeGreaterThanOrEqual(20)
      expect(counts.update - updatesBefore).toBeLessThanOrEqual(Math.ceil((performance.now() - started) / 1000))
      expect(marker()).toBe(markerBefore)
      expect((await store.read())[first.name]).toMatchObject({ state: 'idle', owner: null })
    } finally {
      await pool.drain()
      state.dispose()
    }
  })

  test('PostgreSQL restarting under a warm cycle: it goes on, and every lease is held by one pool at a time', async () => {
    const { url } = await open()
    const state = makeStateDir()
    const provider = fakeProvider({ stateDir: state.dir })
    const pools = [0, 1].map(() => createPool({ provider, stateDir: state.dir, leaseStore: new PostgresLeaseStore({ connectionString: url, namespace: 'fake' }), keepWarm: { ttlMs: 600_000, max: 4 }, reaper: false }))
    const holding = new Map<string, number>()
    let doubles = 0
    let cycles = 0
    let stop = false
    const cycle = async (index: number) => {
      while (!stop) {
        const lease = await pools[index]!.acquire(`k${index}`)
        if (holding.has(lease.name)) doubles++
        holding.set(lease.name, index)
        await new Promise((resolve) => setTimeout(resolve, 2))
        holding.delete(lease.name)
        await lease.release()
        cycles++
      }
    }
    try {
      const running = [cycle(0), cycle(1)]
      await new Promise((resolve) => setTimeout(resolve, 500))
      await server.restart()
      const afterRestart = cycles
      await new Promise((resolve) => setTimeout(resolve, 1_000))
      stop = true
      await Promise.all(running)
      expect(doubles).toBe(0)
      expect(cycles).toBeGreaterThan(afterRestart)
      const leases = await pools[0]!.store.read()
      expect(Object.values(leases).every((entry) => entry.state === 'idle')).toBe(true)
    } finally {
      for (const pool of pools) await pool.drain().catch(() => {})
      for (const pool of pools) await pool.store.close?.()
      state.dispose()
    }
  }, 120_000)
})
