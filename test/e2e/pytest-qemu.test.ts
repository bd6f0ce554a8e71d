import { beforeAll, describe, expect, test } from 'vitest'
import { ensureDistBuilt } from '../../fixtures/pool/harness.js'
import { getQemuSkipReason } from '../helpers/qemu.js'
import { findPytest, runPytest, runVmPool } from '../helpers/pytest-fixture.js'

/**
 * The pytest plugin on real QEMU VMs: fixtures/pytest-slots with `pytest -n 2` (two worker VMs, three fresh
 * VMs), and clean_worker_vm with `--vm-pool-reset snapshot` (the provider's snapshot restore). Set
 * VM_POOL_TIMEOUT_SCALE=3 on a busy machine.
 */
const pytest = findPytest()
const qemuSkip = getQemuSkipReason()

describe.skipIf(pytest.missing !== undefined || qemuSkip !== undefined)('pytest-vm-pool on QEMU', () => {
  beforeAll(async () => {
    await ensureDistBuilt()
  }, 180_000)

  test('pytest -n 2: one QEMU VM per xdist worker (the same running guest for all its tests), fresh VMs distinct, nothing left', { timeout: 900_000 }, async () => {
    const run = await runPytest('slots', { python: pytest.python!, args: ['-n', '2'], provider: 'qemu' })
    expect(run.exitCode, run.output()).toBe(0)
    expect(run.stdout).toMatch(/8 passed, 1 xfailed/)
    const results = Object.values(run.results())
    expect(results).toHaveLength(9)
    const byWorker = groupBy(results, (r) => r.worker)
    expect([...byWorker.keys()].sort()).toEqual(['gw0', 'gw1'])
    expect(new Set(results.map((r) => r.vm)).size).toBe(2)
    for (const records of byWorker.values()) {
      const vm = records[0]!.vm
      expect(vm).toMatch(new RegExp(`^pytest-worker-${records[0]!.pid}-\\d{9,11}$`))
      for (const record of records) expect(record.vm).toBe(vm)
      // One running guest per worker: the kernel's boot id is the same in all its tests, and the trace
      // each test leaves inside the VM is seen by the later ones (0, 1, ..., n-1).
      expect(new Set(records.map((r) => r.bootId)).size).toBe(1)
      expect(records[0]!.bootId).toMatch(/^[0-9a-f-]{36}$/)
      expect(records.map((r) => r.seenBefore.length).sort((a, b) => a - b)).toEqual(records.map((_, i) => i))
    }
    const [a, b] = [...byWorker.values()]
    expect(a![0]!.bootId).not.toBe(b![0]!.bootId)
    const fresh = results.filter((r) => r.fresh).map((r) => r.fresh!)
    expect(new Set(fresh).size).toBe(3)
    expect(run.liveVms('qemu')).toEqual([])
    expect(run.stdout).toMatch(/^vm-pool: 5 created, 0 reused, 5 deleted, 0 leaked$/m)
    const gc = await runVmPool(['gc', '--json', '--provider', 'qemu'], run.stateDir)
    expect(JSON.parse(gc.stdout)).toMatchObject({ deleted: [], failed: [] })
  })

  test('clean_worker_vm with --vm-pool-reset snapshot: the worker VM is restored to the snapshot before a test that follows a use', { timeout: 900_000 }, async () => {
    const run = await runPytest('clean', { python: pytest.python!, args: ['-p', 'no:xdist', '--vm-pool-reset', 'snapshot'], env: { VM_POOL_E2E_RESET: 'snapshot' }, provider: 'qemu' })
    expect(run.exitCode, run.output()).toBe(0)
    expect(run.stdout).toMatch(/4 passed/)
    expect(run.stdout).toMatch(/^vm-pool: 1 created, 0 reused, 1 deleted, 0 leaked$/m)
    expect(run.liveVms('qemu')).toEqual([])
  })
})

function groupBy<T>(items: T[], key: (item: T) => string): Map<string, T[]> {
  const groups = new Map<string, T[]>()
  for (const item of items) groups.set(key(item), [...(groups.get(key(item)) ?? []), item])
  return groups
}
