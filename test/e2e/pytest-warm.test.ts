import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { beforeAll, describe, expect, test } from 'vitest'
import { ensureDistBuilt } from '../../fixtures/pool/harness.js'
import { findPytest, runPytest, runVmPool } from '../helpers/pytest-fixture.js'
import { getVitestBinaries, runFixture } from '../helpers/vitest-fixture.js'

/**
 * Warm VMs are shared across runners on one host: a Vitest run with keepWarm (fixtures/vitest-warm: two
 * slots) leaves two idle VMs; a pytest -n 2 run with --vm-pool-keep-warm adopts both and boots nothing;
 * and back: VMs a pytest run booted and left warm are adopted by the next Vitest run. Fake provider, one
 * state dir (so one lease table), the same spec on both sides.
 */
const pytest = findPytest()
const vitest5 = getVitestBinaries().find((binary) => binary.label === '5')!

/**
 * Each xdist worker's tests wait until both workers hold their VM (fixtures/pytest-slots/tests/vm_record.py):
 * xdist ends a worker's session as soon as its share is done, and a worker that started late would otherwise
 * adopt the VM the early one just left warm (which is right, but not what these counts are about).
 */
const BOTH_HOLD = { VM_POOL_E2E_HOLDERS: '2' }

const fakeVms = (stateDir: string) => (existsSync(join(stateDir, 'fake')) ? readdirSync(join(stateDir, 'fake')).sort() : [])

describe.skipIf(pytest.missing !== undefined)('warm VMs shared between Vitest and pytest', () => {
  beforeAll(async () => {
    await ensureDistBuilt()
  }, 180_000)

  test('a Vitest run with keepWarm, then pytest -n 2 --vm-pool-keep-warm: pytest boots 0 VMs', { timeout: 400_000 }, async () => {
    const first = await runFixture('warm', { vitest: vitest5 })
    expect(first.exitCode, first.stderr).toBe(0)
    expect(first.report()).toMatchObject({ created: 2, keptWarm: 2, leaked: 0 })
    const warm = first.liveVms()
    expect(warm).toHaveLength(2)
    for (const name of warm) expect(name).toMatch(/^vitest-worker-/)
    try {
      const run = await runPytest('slots', { python: pytest.python!, stateDir: first.stateDir, args: ['-n', '2', '-k', 'not fresh', '--vm-pool-keep-warm'], env: BOTH_HOLD })
      expect(run.exitCode, run.output()).toBe(0)
      expect(run.stdout).toMatch(/^vm-pool: 0 created, 2 reused, 0 deleted, 0 leaked, 2 kept warm$/m)
      const results = Object.values(run.results())
      expect(results).toHaveLength(5)
      // Each xdist worker got one of the VMs Vitest left (they keep the names they were booted with) and says so.
      expect([...new Set(results.map((r) => r.vm))].sort()).toEqual(warm)
      for (const record of results) expect(record).toMatchObject({ adopted: true, vmFromGuest: record.vm })
      // Handed back warm again, not deleted.
      expect(fakeVms(first.stateDir)).toEqual(warm)
      const leases = JSON.parse((await runVmPool(['ls', '--json'], first.stateDir)).stdout) as { name: string; lease: string }[]
      expect(leases.map((row) => [row.name, row.lease])).toEqual(warm.map((name) => [name, 'idle']))
    } finally {
      await runVmPool(['gc', '--all'], first.stateDir)
    }
    expect(fakeVms(first.stateDir)).toEqual([])
  })

  test('and back: VMs a pytest run booted and left warm are adopted by the next Vitest run, which boots 0', { timeout: 400_000 }, async () => {
    const run = await runPytest('slots', { python: pytest.python!, args: ['-n', '2', '-k', 'not fresh', '--vm-pool-keep-warm=10m'], env: BOTH_HOLD })
    expect(run.exitCode, run.output()).toBe(0)
    expect(run.stdout).toMatch(/^vm-pool: 2 created, 0 reused, 0 deleted, 0 leaked, 2 kept warm$/m)
    const warm = fakeVms(run.stateDir)
    expect(warm).toHaveLength(2)
    for (const name of warm) expect(name).toMatch(/^pytest-worker-\d+-\d+$/)
    try {
      const vitestRun = await runFixture('warm', { vitest: vitest5, env: { VM_POOL_E2E_STATE_DIR: run.stateDir } })
      expect(vitestRun.exitCode, vitestRun.stderr).toBe(0)
      const report = vitestRun.report()
      expect(report).toMatchObject({ created: 0, keptWarm: 2, leaked: 0 })
      expect(report.vms.map((vm) => vm.name).sort()).toEqual(warm)
      expect(vitestRun.stderr).toMatch(/^vm-pool: 0 created, 2 reused, 0 deleted, 0 leaked/m)
    } finally {
      await runVmPool(['gc', '--all'], run.stateDir)
    }
    expect(fakeVms(run.stateDir)).toEqual([])
  })
})
