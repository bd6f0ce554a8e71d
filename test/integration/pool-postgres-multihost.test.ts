/**
 * Two "hosts" (processes with different VM_POOL_HOST_ID), 8 processes each, share one warm pool through the
 * PostgreSQL lease store (a real cluster, test/helpers/postgres.ts): no VM is ever held by two processes at
 * once — checked inside the VM with an O_EXCL marker file, as pool-multiprocess.test.ts does on one host —
 * and no more VMs are booted than processes run at once.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { PostgresLeaseStore } from '../../src/pool/postgres-lease-store.js'
import { killFixtures, makeStateDir, spawnFixture } from '../../fixtures/pool/harness.js'
import { getPostgresSkipReason, startPostgres, type StartedPostgres } from '../helpers/postgres.js'

const skipReason = getPostgresSkipReason()
const HOSTS = ['host-a', 'host-b'] as const
const PROCESSES_PER_HOST = 8
const CYCLES = 25

describe.skipIf(skipReason !== undefined)(`pool across hosts (PostgreSQL)${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let server: StartedPostgres
  const state = makeStateDir()
  beforeAll(async () => {
    server = await startPostgres()
  }, 120_000)
  afterEach(killFixtures)
  afterAll(() => {
    server?.stop()
    state.dispose()
  })

  test(`${HOSTS.length} hosts × ${PROCESSES_PER_HOST} processes × ${CYCLES} acquire/release cycles on one warm pool`, async () => {
    const connectionString = await server.createDatabase('multihost')
    const concurrency = HOSTS.length * PROCESSES_PER_HOST
    const goFile = join(state.dir, 'go')
    const fixtures = HOSTS.flatMap((host) =>
      Array.from({ length: PROCESSES_PER_HOST }, (_, i) => ({
        host,
        fixture: spawnFixture('cycler.mjs', { stateDir: state.dir, key: `${host}-p${i}`, cycles: CYCLES, keepWarm: { ttlMs: 600_000, max: concurrency }, goFile, leaseStore: connectionString }, { env: { VM_POOL_HOST_ID: host } }),
      })),
    )
    await Promise.all(fixtures.map(({ fixture }) => fixture.message((m) => m.ready === true, 'ready', 120_000)))
    // All start together, so leases really contend.
    writeFileSync(goFile, '')
    const results: Record<string, unknown>[] = await Promise.all(fixtures.map(async ({ host, fixture }) => ({ host, ...(await fixture.message((m) => m.done === true, 'done', 540_000)) })))

    expect(results.flatMap((result) => result.violations as unknown[])).toEqual([])
    const stats = results.map((result) => result.stats as { created: number; reused: number; leaked: number })
    const created = stats.reduce((sum, s) => sum + s.created, 0)
    const leases = concurrency * CYCLES
    // A VM is booted only when every existing one is held: at most one per process running at once.
    expect(created).toBeGreaterThan(0)
    expect(created).toBeLessThanOrEqual(concurrency)
    expect(stats.reduce((sum, s) => sum + s.reused, 0)).toBe(leases - created)
    expect(stats.reduce((sum, s) => sum + s.leaked, 0)).toBe(0)
    expect(results.reduce((sum, result) => sum + (result.adopted as number), 0)).toBe(leases - created)
    // VMs really move between hosts. Pools prefer the VM they just handed back (a kept connection), so
    // processes running at once rarely trade VMs; a later process shows the sharing: one on host-b takes every
    // idle VM at once, those host-a used included, and boots none.
    const onA = new Set(results.filter((result) => result.host === 'host-a').flatMap((result) => result.names as string[]))
    const keepWarm = { ttlMs: 600_000, max: concurrency }
    const later = spawnFixture('holder.mjs', { stateDir: state.dir, keys: Array.from({ length: created }, (_, i) => `later-${i}`), keepWarm, leaseStore: connectionString }, { env: { VM_POOL_HOST_ID: 'host-b' } })
    const ready = await later.message((m) => m.ready === true, 'later process ready', 120_000)
    expect((ready.stats as { created: number }).created).toBe(0)
    expect(Object.values(ready.leases as Record<string, string>).some((name) => onA.has(name))).toBe(true)
    later.send({ cmd: 'drain' })
    await later.message((m) => m.drained === true, 'later process drained', 120_000)

    // Afterwards every VM is idle, and the provider has exactly those.
    const store = new PostgresLeaseStore({ connectionString, namespace: 'fake' })
    try {
      const entries = Object.values(await store.read())
      expect(entries.length).toBe(created)
      expect(entries.every((entry) => entry.state === 'idle' && entry.owner === null)).toBe(true)
      const provider = fakeProvider({ stateDir: state.dir })
      expect((await provider.list()).map((info) => info.name).sort()).toEqual(entries.map((entry) => entry.name).sort())
    } finally {
      await store.close()
    }
  }, 600_000)
})
