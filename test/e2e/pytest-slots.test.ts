import { readdirSync, readFileSync } from 'node:fs'
import { beforeAll, describe, expect, test } from 'vitest'
import { ensureDistBuilt } from '../../fixtures/pool/harness.js'
import { findPytest, runPytest, runVmPool, type PytestRun, type TestRecord } from '../helpers/pytest-fixture.js'

/**
 * Real pytest on fixtures/pytest-slots (6 test files; file 6 also takes three fresh VMs, one in a test that
 * fails on purpose), the plugin loaded through its `pytest11` entry point, the fake provider. Each test
 * records the worker VM it got and what a command inside that VM saw.
 */
const pytest = findPytest()

describe.skipIf(pytest.missing !== undefined)(`pytest-vm-pool on real pytest (${pytest.version ?? 'missing'})`, () => {
  beforeAll(async () => {
    await ensureDistBuilt()
  }, 180_000)

  test('pytest -n 2: one worker VM per xdist worker, named pytest-worker-<pid>-<unix time>; fresh VMs distinct and gone; 0 VMs left', { timeout: 400_000 }, async () => {
    const started = Math.floor(Date.now() / 1000)
    const run = await runPytest('slots', { python: pytest.python!, args: ['-n', '2'] })
    const ended = Math.ceil(Date.now() / 1000)
    expect(run.exitCode, run.output()).toBe(0)
    expect(run.stdout).toMatch(/^plugins: .*vm-pool-0\.1\.0/m)
    expect(run.stdout).toMatch(/8 passed, 1 xfailed/)
    const results = Object.values(run.results())
    expect(results.map((r) => r.test).sort()).toEqual(['file-1', 'file-2', 'file-3', 'file-4', 'file-5', 'file-6', 'fresh-1', 'fresh-2', 'fresh-failing'])

    // Exactly two worker VMs, one per xdist worker; every test of a worker ran on its worker's VM.
    const byWorker = groupBy(results, (r) => r.worker)
    expect([...byWorker.keys()].sort()).toEqual(['gw0', 'gw1'])
    const workerVms = new Set(results.map((r) => r.vm))
    expect(workerVms.size).toBe(2)
    for (const records of byWorker.values()) {
      expect(new Set(records.map((r) => r.vm)).size).toBe(1)
      expect(new Set(records.map((r) => r.pid)).size).toBe(1)
    }
    checkFromInside(results)
    // The name carries the worker's pid and the unix time it was made.
    for (const record of results) {
      const match = /^pytest-worker-(\d+)-(\d+)$/.exec(record.vm)
      expect(match, record.vm).not.toBeNull()
      expect(Number(match![1])).toBe(record.pid)
      expect(Number(match![2])).toBeGreaterThanOrEqual(started - 1)
      expect(Number(match![2])).toBeLessThanOrEqual(ended)
    }

    // fresh_vm: three distinct VMs, none a worker VM, each answering as itself — and all gone, the failing test's too.
    const fresh = results.filter((r) => r.fresh).map((r) => r.fresh!)
    expect(new Set(fresh).size).toBe(3)
    for (const record of results.filter((r) => r.fresh)) {
      expect(record.fresh).toMatch(/^pytest-fresh-[a-z0-9]+-\d+$/)
      expect(record.freshFromGuest).toBe(record.fresh)
      expect(workerVms.has(record.fresh!)).toBe(false)
    }
    await expectNothingLeft(run, results)
    expect(run.stdout).toMatch(/^vm-pool: 5 created, 0 reused, 5 deleted, 0 leaked$/m)
  })

  test('without xdist: one worker VM for the whole run, named after pytest itself', { timeout: 400_000 }, async () => {
    const run = await runPytest('slots', { python: pytest.python!, args: ['-p', 'no:xdist'] })
    expect(run.exitCode, run.output()).toBe(0)
    const results = Object.values(run.results())
    expect(results).toHaveLength(9)
    expect(new Set(results.map((r) => r.vm)).size).toBe(1)
    expect(results[0]!.vm).toMatch(new RegExp(`^pytest-worker-${results[0]!.pid}-\\d{9,11}$`))
    expect(new Set(results.map((r) => r.worker))).toEqual(new Set(['main']))
    checkFromInside(results)
    await expectNothingLeft(run, results)
    expect(run.stdout).toMatch(/^vm-pool: 4 created, 0 reused, 4 deleted, 0 leaked$/m)
  })

  test('clean_worker_vm: the reset line runs before a test when an earlier test used the worker VM', { timeout: 400_000 }, async () => {
    const run = await runPytest('clean', { python: pytest.python!, args: ['-p', 'no:xdist', '--vm-pool-reset', 'rm -rf ./* && echo reset >> .resets'] })
    expect(run.exitCode, run.output()).toBe(0)
    expect(run.stdout).toMatch(/4 passed/)
    expect(run.liveVms()).toEqual([])
  })
})

/** Checked from inside each VM: it answers with its own name, and keeps the trace of the earlier tests of its worker only. */
function checkFromInside(results: TestRecord[]): void {
  for (const record of results) expect(record.vmFromGuest).toBe(record.vm)
  for (const records of groupBy(results, (r) => r.vm).values()) {
    // n tests on one running VM saw 0, 1, ..., n-1 traces before them, all of this VM's tests.
    expect(records.map((r) => r.seenBefore.length).sort((a, b) => a - b)).toEqual(records.map((_, i) => i))
    for (const record of records) expect(records.map((r) => r.test)).toEqual(expect.arrayContaining(record.seenBefore))
  }
}

async function expectNothingLeft(run: PytestRun, results: TestRecord[]): Promise<void> {
  expect(run.liveVms()).toEqual([])
  expect(JSON.parse((await runVmPool(['ls', '--json'], run.stateDir)).stdout)).toEqual([])
  const gc = await runVmPool(['gc', '--json'], run.stateDir)
  expect(JSON.parse(gc.stdout)).toMatchObject({ deleted: [], failed: [] })
  // Every helper exited with its worker (a helper runs `vm-pool protocol --parent-pid <worker pid>`).
  const pids = new Set(results.map((r) => String(r.pid)))
  expect(helperProcesses().filter((cmdline) => pids.has(cmdline.split('--parent-pid ')[1] ?? ''))).toEqual([])
}

/** Command lines of running `vm-pool protocol` helpers. */
export function helperProcesses(): string[] {
  const lines: string[] = []
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim()
      if (/ protocol --parent-pid \d+/.test(cmdline)) lines.push(cmdline)
    } catch {
      // gone
    }
  }
  return lines
}

function groupBy<T>(items: T[], key: (item: T) => string): Map<string, T[]> {
  const groups = new Map<string, T[]>()
  for (const item of items) groups.set(key(item), [...(groups.get(key(item)) ?? []), item])
  return groups
}
