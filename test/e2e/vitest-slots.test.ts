import { describe, expect, test } from 'vitest'
import { getVitestBinaries, runFixture, type FixtureRun } from '../helpers/vitest-fixture.js'

/**
 * Real `vitest run` on fixtures/vitest-slots: 6 files, maxWorkers 2. Each file records the worker
 * VM it got, the VM that answered an exec, VITEST_POOL_ID and its pid; one file also uses freshVm.
 */
const binaries = getVitestBinaries()

for (const vitest of binaries) {
  describe.skipIf(vitest.missing && !process.env.CI)(`Vitest ${vitest.label}${vitest.missing && !process.env.CI ? ` (skipped: ${vitest.missing})` : ''}`, () => {
    if (vitest.missing) {
      if (process.env.CI) throw new Error(vitest.missing)
      console.warn(`skipping the Vitest ${vitest.label} e2e runs: ${vitest.missing}`)
    }
    const matrix = [
      { workers: 'forks', isolate: true },
      { workers: 'forks', isolate: false },
      { workers: 'threads', isolate: true },
      { workers: 'threads', isolate: false },
    ] as const

    test.for(matrix)('one VM per slot, the same across files ($workers, isolate $isolate)', { timeout: 300_000 }, async ({ workers, isolate }) => {
      const run = await runFixture('slots', { vitest, env: { VM_POOL_E2E_WORKERS: workers, VM_POOL_E2E_ISOLATE: String(isolate), VM_POOL_E2E_MAX_WORKERS: '2' } })
      expect(run.exitCode, output(run)).toBe(0)
      expect(run.stdout).toContain(` v${vitest.label}.`)
      const results = Object.values(run.results())
      expect(results).toHaveLength(6)

      // Every exec reached the VM the fixture handed out.
      for (const record of results) expect(record.vmFromGuest).toBe(record.vm)
      // Exactly two worker VMs, one per slot, and a slot never changes its VM.
      const bySlot = new Map<string, Set<string>>()
      for (const record of results) bySlot.set(record.poolId, (bySlot.get(record.poolId) ?? new Set()).add(record.vm))
      const workerVms = new Set(results.map((r) => r.vm))
      expect(workerVms.size).toBe(2)
      expect([...bySlot.keys()].sort()).toEqual(['1', '2'])
      for (const vms of bySlot.values()) expect(vms.size).toBe(1)
      for (const record of results) expect(record.vm).toMatch(new RegExp(`^vitest-worker-[a-z0-9]+-${record.poolId}$`))
      // Same running VM, not a new one with the same name: each file finds the traces of the earlier
      // files of its slot inside the VM (n files in a slot saw 0, 1, ..., n-1 before them), none of another slot's.
      for (const [slot, vms] of bySlot) {
        const inSlot = results.filter((r) => r.poolId === slot)
        expect(inSlot.map((r) => r.seenBefore.length).sort(), [...vms].join()).toEqual(inSlot.map((_, i) => i))
        for (const record of inSlot) expect(inSlot.map((r) => r.file)).toEqual(expect.arrayContaining(record.seenBefore))
      }

      // isolate: a new worker per file; no isolate: one worker (process or thread) per slot.
      const workerOf = (r: (typeof results)[number]) => (workers === 'forks' ? `${r.pid}` : `${r.pid}/${r.threadId}`)
      const distinctWorkers = new Set(results.map(workerOf)).size
      if (isolate) expect(distinctWorkers).toBe(6)
      else expect(distinctWorkers).toBeLessThanOrEqual(2)

      // freshVm: distinct from each other and from the worker VMs, gone afterwards (checked inside the file too).
      const fresh = results.find((r) => r.fresh)?.fresh ?? []
      expect(new Set(fresh).size).toBe(3)
      for (const name of fresh) expect(workerVms.has(name)).toBe(false)

      // Nothing left; the summary line and the report say the same numbers.
      expect(run.liveVms()).toEqual([])
      const report = run.report()
      expect(report).toMatchObject({ created: 5, reused: 4, deleted: 5, leaked: 0 })
      expect(report.vms.filter((vm) => vm.kind === 'worker').map((vm) => [vm.slot, vm.files]).sort()).toEqual(
        [...bySlot.keys()].sort().map((slot) => [Number(slot), results.filter((r) => r.poolId === slot).length]),
      )
      for (const vm of report.vms) expect(vm.bootMs).toBeGreaterThanOrEqual(0)
      const summaries = run.stderr.match(/^vm-pool: \d+ created, \d+ reused, \d+ deleted, \d+ leaked$/gm) ?? []
      expect(summaries).toEqual(['vm-pool: 5 created, 4 reused, 5 deleted, 0 leaked'])
      // Prewarm said what it booted.
      expect(run.stderr).toMatch(/vm-pool: booting 2 worker VMs on fake/)
      expect(run.stderr).toMatch(/vm-pool: vitest-worker-\S+-1 \(slot 1\) ready in \d+\.\d s/)
    })
  })
}

function output(run: FixtureRun): string {
  return `exit ${run.exitCode} ${run.signal ?? ''}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`
}
