import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { removeDeadBrokerDirs } from '../../src/vitest/fresh-vm-broker.js'
import { getVitestBinaries, runFixture, waitFor, type FixtureRun } from '../helpers/vitest-fixture.js'

/**
 * What goes wrong in real runs: a worker that dies, `vitest run` interrupted (Ctrl-C, SIGTERM,
 * kill -9), a provider that cannot boot. Real Vitest child processes on fixture projects.
 */
const binaries = getVitestBinaries()
/** "Within a few seconds" with room for a loaded 2-core CI machine; a deadline, returns as soon as it holds. */
const REAPED_DEADLINE_MS = 30_000

for (const vitest of binaries) {
  describe.skipIf(vitest.missing && !process.env.CI)(`Vitest ${vitest.label}${vitest.missing && !process.env.CI ? ` (skipped: ${vitest.missing})` : ''}`, () => {
    if (vitest.missing) {
      if (process.env.CI) throw new Error(vitest.missing)
      console.warn(`skipping the Vitest ${vitest.label} e2e runs: ${vitest.missing}`)
    }

    test('a worker that crashes gets its slot VM replaced, and nothing leaks', { timeout: 300_000 }, async () => {
      // One slot, files in name order: a-crash kills its worker mid-test, b/c/d run in that slot afterwards.
      const run = await runFixture('crash', { vitest, env: { VM_POOL_E2E_MAX_WORKERS: '1' } })
      const results = run.results()
      const crashed = results['a-crash.test.ts']!
      const after = ['b-after.test.ts', 'c-after.test.ts', 'd-after.test.ts'].map((file) => results[file]!)
      expect(crashed, output(run)).toBeDefined()
      // Vitest reports the dead worker (exit code 1) — and the files after it passed on a new VM.
      expect(run.exitCode).toBe(1)
      expect(run.stdout + run.stderr).toMatch(/Worker exited unexpectedly/)
      expect(run.stdout).toMatch(/Tests\s+4 passed \(5\)/)
      expect(new Set(after.map((r) => r.vm)).size).toBe(1)
      expect(after[0]!.vm).not.toBe(crashed.vm)
      expect(after[0]!.vm).toMatch(new RegExp(`^vitest-worker-[a-z0-9]+-1-2$`))
      // Inside the VMs: the replacement carries the traces of b, c, d only, never of the crashed file.
      expect(crashed.seenBefore).toEqual([])
      expect(after.map((r) => r.seenBefore)).toEqual([[], ['b-after.test.ts'], ['b-after.test.ts', 'c-after.test.ts']])
      expect(run.stderr).toContain(`the worker of slot 1 exited unexpectedly; replacing its VM ${crashed.vm}`)
      expect(run.liveVms()).toEqual([])
      const report = run.report()
      // Crashed VM + its orphaned fresh VM + the replacement: 3 created, 3 deleted.
      expect(report).toMatchObject({ created: 3, reused: 2, deleted: 3, leaked: 0 })
      expect(report.vms.find((vm) => vm.name === crashed.vm)).toMatchObject({ replacedAfterCrash: true, state: 'deleted', files: 1 })
      expect(report.vms.find((vm) => vm.name === crashed.fresh![0])).toMatchObject({ kind: 'fresh', state: 'deleted' })
    })

    for (const how of ['SIGINT to the process group (Ctrl-C)', 'SIGTERM', 'SIGKILL'] as const) {
      test(`${how} of vitest run: no VM left after a few seconds`, { timeout: 300_000 }, async () => {
        let liveWhenInterrupted: string[] = []
        let signalledAt = 0
        const run = await runFixture('signals', {
          vitest,
          env: { VM_POOL_E2E_MAX_WORKERS: '2' },
          async onSpawn(child, current) {
            // Both files hold their worker VM and a fresh VM, and are waiting forever.
            await waitFor(() => ['one.test.ts', 'two.test.ts'].every((f) => existsSync(join(current.resultsDir, `${f}.ready`))), 'both fixture files to be running')
            liveWhenInterrupted = current.liveVms()
            signalledAt = performance.now()
            if (how === 'SIGKILL') process.kill(child.pid!, 'SIGKILL')
            else if (how === 'SIGTERM') process.kill(child.pid!, 'SIGTERM')
            else process.kill(-child.pid!, 'SIGINT')
            await waitFor(() => child.exitCode !== null || child.signalCode !== null, 'vitest run to exit')
          },
        })
        // 2 worker VMs + 2 fresh VMs were alive: the test saw them before the signal.
        expect(liveWhenInterrupted, output(run)).toHaveLength(4)
        await waitFor(() => run.liveVms().length === 0, `the reaper to delete ${run.liveVms().join(', ')}`, REAPED_DEADLINE_MS)
        expect(run.liveVms()).toEqual([])
        // The freshVm broker's socket dir: gone at exit when Vitest handled the signal and exited (exit code set);
        // killed by the signal itself (SIGKILL; Vitest 4.1 for SIGINT/SIGTERM), the next run's broker removes it.
        const socket = run.results()['one.test.ts']!.brokerSocket!
        expect(socket).toMatch(/broker\.sock$/)
        if (run.exitCode !== null) expect(existsSync(dirname(socket))).toBe(false)
        await removeDeadBrokerDirs()
        expect(existsSync(dirname(socket))).toBe(false)
        // A figure for the record, not an assertion.
        console.info(`Vitest ${vitest.label}, ${how}: 4 VMs gone ${Math.round(performance.now() - signalledAt)} ms after the signal`)
      })
    }

    test('a provider that cannot boot VMs fails the run once, in globalSetup, readably', { timeout: 300_000 }, async () => {
      const run = await runFixture('provider-error', { vitest, env: { VM_POOL_E2E_MAX_WORKERS: '2' } })
      const all = run.stdout + run.stderr
      expect(run.exitCode, output(run)).not.toBe(0)
      // Once: not once per file (4 files) nor once per slot (2 slots).
      expect(all.match(/VmPoolError: \[vm-pool\] \[fake\] injected create failure for vitest-worker-[a-z0-9]+-\d/g)).toHaveLength(1)
      expect(all).not.toMatch(/file-\d\.test\.ts/)
      expect(all.match(/^vm-pool: \d+ created/gm)).toEqual(['vm-pool: 0 created'])
      expect(run.report()).toMatchObject({ created: 0, deleted: 0, leaked: 0 })
      expect(run.liveVms()).toEqual([])
    })

    test('an unknown provider fails when the config loads, once, naming the option', { timeout: 300_000 }, async () => {
      const run = await runFixture('provider-error', { vitest, env: { VM_POOL_E2E_PROVIDER: 'no-such-provider' } })
      const all = run.stdout + run.stderr
      expect(run.exitCode, output(run)).not.toBe(0)
      expect(all.match(/\[vm-pool\] invalid vmPool\(\) options: provider: unknown provider "no-such-provider"/g)).toHaveLength(1)
      expect(all).toMatch(/hint: choose one of: .*fake/)
    })
  })
}

function output(run: FixtureRun): string {
  return `exit ${run.exitCode} ${run.signal ?? ''}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`
}
