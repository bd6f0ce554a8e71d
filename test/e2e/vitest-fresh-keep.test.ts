import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import { collectGarbage } from '../../src/pool/garbage-collector.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { getVitestBinaries, runFixture, waitFor, type FixtureRun } from '../helpers/vitest-fixture.js'

/**
 * `freshVm().keep()` in real `vitest run`s on fixtures/vitest-keep: the worker asks the broker, the
 * main process hands the VM to the pool's `keep()` and forgets it. The kept VM must survive the end of
 * its test, the run's teardown and the reaper; it is not counted as leaked; `vm-pool gc` deletes it.
 */
const binaries = getVitestBinaries()
/** A deadline for the reaper after `kill -9`, with room for a loaded 2-core CI machine; returns as soon as it holds. */
const REAPED_DEADLINE_MS = 30_000

for (const vitest of binaries) {
  describe.skipIf(vitest.missing && !process.env.CI)(`Vitest ${vitest.label}${vitest.missing && !process.env.CI ? ` (skipped: ${vitest.missing})` : ''}`, () => {
    if (vitest.missing) {
      if (process.env.CI) throw new Error(vitest.missing)
      console.warn(`skipping the Vitest ${vitest.label} e2e runs: ${vitest.missing}`)
    }

    test('a kept fresh VM outlives its test and the run, is reported as kept, and vm-pool gc deletes it', { timeout: 300_000 }, async () => {
      const run = await runFixture('keep', { vitest, env: { VM_POOL_E2E_MAX_WORKERS: '1' } })
      expect(run.exitCode, output(run)).toBe(0)
      const [kept, dropped] = run.results()['keep.test.ts']!.fresh!
      // The worker VM and the other fresh VM are gone; the kept one is still there.
      expect(run.liveVms()).toEqual([kept])
      const report = run.report()
      expect(report).toMatchObject({ created: 3, deleted: 2, leaked: 0, kept: 1, keptWarm: 0 })
      expect(report.vms.find((vm) => vm.name === kept)).toMatchObject({ kind: 'fresh', slot: 1, state: 'kept' })
      expect(report.vms.find((vm) => vm.name === dropped)).toMatchObject({ kind: 'fresh', state: 'deleted' })
      expect(run.stderr).toMatch(/^vm-pool: 3 created, 0 reused, 2 deleted, 0 leaked, 1 kept by keep\(\)$/m)
      expect(run.stderr).toContain(`vm-pool: ${kept} was kept running by keep(); the next \`npx vm-pool gc --provider fake\` deletes it`)

      // The pool forgot its lease: nobody holds it, so gc deletes it (its name says vitest-fresh-).
      const provider = fakeProvider({ stateDir: run.stateDir })
      expect((await new FileLeaseStore({ provider, stateDir: run.stateDir }).read())[kept!]).toBeUndefined()
      const gc = await collectGarbage({ provider, stateDir: run.stateDir })
      expect(gc.deleted.map((decision) => [decision.name, decision.reason])).toEqual([[kept, 'no lease: no live vm-pool process holds it']])
      expect(run.liveVms()).toEqual([])
    })

    test('kill -9 of vitest run after keep(): the reaper deletes the rest, never the kept VM', { timeout: 300_000 }, async () => {
      const reapers = (current: FixtureRun) => join(current.stateDir, 'reapers')
      const markers = (current: FixtureRun) => (existsSync(reapers(current)) ? readdirSync(reapers(current)).filter((name) => name.endsWith('.json')) : [])
      let liveWhenKilled: string[] = []
      const run = await runFixture('keep', {
        vitest,
        env: { VM_POOL_E2E_MAX_WORKERS: '1', VM_POOL_E2E_KEEP_HOLD: 'true' },
        async onSpawn(child, current) {
          await waitFor(() => existsSync(join(current.resultsDir, 'keep.test.ts.ready')), 'the fixture to keep its VM')
          liveWhenKilled = current.liveVms()
          process.kill(child.pid!, 'SIGKILL')
          await waitFor(() => child.exitCode !== null || child.signalCode !== null, 'vitest run to exit')
        },
      })
      const [kept] = run.results()['keep.test.ts']!.fresh!
      // The worker VM and the kept VM were alive (the other fresh VM was deleted at the end of its block).
      expect(liveWhenKilled, output(run)).toHaveLength(2)
      expect(liveWhenKilled).toContain(kept)
      // The reaper removes its marker once it deleted what it was watching: then only the kept VM is left.
      await waitFor(() => markers(run).length === 0 && run.liveVms().length === 1, `the reaper to finish (left: ${run.liveVms().join(', ')})`, REAPED_DEADLINE_MS)
      expect(run.liveVms()).toEqual([kept])
      await collectGarbage({ provider: fakeProvider({ stateDir: run.stateDir }), stateDir: run.stateDir })
      expect(run.liveVms()).toEqual([])
    })
  })
}

function output(run: FixtureRun): string {
  return `exit ${run.exitCode} ${run.signal ?? ''}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`
}
