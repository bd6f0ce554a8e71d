/**
 * 8 real OS processes share one warm pool (fake provider, one state dir): no VM is ever held by two of
 * them at once — checked inside the VM with an O_EXCL marker file — and far fewer VMs are booted than leases served.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import { killFixtures, makeStateDir, spawnFixture } from '../../fixtures/pool/harness.js'

const PROCESSES = 8
const CYCLES = 25

describe('pool across processes', () => {
  const state = makeStateDir()
  afterEach(killFixtures)
  afterAll(() => state.dispose())

  test(`${PROCESSES} processes × ${CYCLES} acquire/release cycles on one warm pool`, async () => {
    const goFile = join(state.dir, 'go')
    const fixtures = Array.from({ length: PROCESSES }, (_, i) =>
      spawnFixture('cycler.mjs', { stateDir: state.dir, key: `p${i}`, cycles: CYCLES, keepWarm: { ttlMs: 600_000, max: PROCESSES }, goFile }),
    )
    await Promise.all(fixtures.map((fixture) => fixture.message((m) => m.ready === true, 'ready', 120_000)))
    // All start together, so leases really contend.
    writeFileSync(goFile, '')
    // 8 × 25 cycles of 4 execs each take ~35 s on 2 busy cores (measured for both the old and the new lock).
    const results = await Promise.all(fixtures.map((fixture) => fixture.message((m) => m.done === true, 'done', 150_000)))

    const violations = results.flatMap((result) => result.violations as unknown[])
    expect(violations).toEqual([])
    const stats = results.map((result) => result.stats as { created: number; reused: number; deleted: number; leaked: number })
    const created = stats.reduce((sum, s) => sum + s.created, 0)
    const leases = PROCESSES * CYCLES
    // A VM is booted only when no idle one exists, i.e. all existing ones are held: at most one per process.
    expect(created).toBeGreaterThan(0)
    expect(created).toBeLessThanOrEqual(PROCESSES)
    expect(stats.reduce((sum, s) => sum + s.reused, 0)).toBe(leases - created)
    expect(stats.reduce((sum, s) => sum + s.leaked, 0)).toBe(0)
    // VMs really moved between processes: some process used a VM another one booted.
    const adopted = results.reduce((sum, result) => sum + (result.adopted as number), 0)
    expect(adopted).toBe(leases - created)

    // Afterwards every VM is idle, none leased, and the provider has exactly those.
    const provider = fakeProvider({ stateDir: state.dir })
    const table = await new FileLeaseStore({ provider, stateDir: state.dir }).read()
    const entries = Object.values(table)
    expect(entries.length).toBe(created)
    expect(entries.every((entry) => entry.state === 'idle' && entry.owner === null)).toBe(true)
    expect((await provider.list()).map((info) => info.name).sort()).toEqual(entries.map((entry) => entry.name).sort())
  }, 180_000)
})
