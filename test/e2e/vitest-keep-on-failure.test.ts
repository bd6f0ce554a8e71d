import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { collectGarbage } from '../../src/pool/garbage-collector.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { getVitestBinaries, runFixture, type FixtureRun } from '../helpers/vitest-fixture.js'

/**
 * `vmPool({ keepOnFailure: true })` in real `vitest run`s on fixtures/vitest-keep-on-failure: the fresh VM of the
 * failed test is kept as the failure left it (the file it wrote is there), the summary says how to get a shell in
 * it and how to delete it; the passing test's fresh VM and the worker VM are deleted as usual.
 */
for (const vitest of getVitestBinaries()) {
  describe.skipIf(vitest.missing && !process.env.CI)(`Vitest ${vitest.label}${vitest.missing && !process.env.CI ? ` (skipped: ${vitest.missing})` : ''}`, () => {
    if (vitest.missing) {
      if (process.env.CI) throw new Error(vitest.missing)
      console.warn(`skipping the Vitest ${vitest.label} e2e runs: ${vitest.missing}`)
    }

    test('the failed test keeps its fresh VM as the failure left it; the summary prints vm-pool ssh and rm', { timeout: 300_000 }, async () => {
      const run = await runFixture('keep-on-failure', { vitest, env: { VM_POOL_E2E_MAX_WORKERS: '1' } })
      expect(run.exitCode, output(run)).toBe(1)
      const failed = readFileSync(join(run.resultsDir, 'failed-vm'), 'utf8')
      const passed = readFileSync(join(run.resultsDir, 'passed-vm'), 'utf8')
      expect(run.liveVms()).toEqual([failed])
      expect(readFileSync(join(run.stateDir, 'fake', failed, 'home', 'state'), 'utf8')).toBe('left-by-the-failure\n')
      expect(run.report()).toMatchObject({ created: 3, deleted: 2, leaked: 0, kept: 1 })
      expect(run.report().vms.find((vm) => vm.name === passed)).toMatchObject({ state: 'deleted' })
      expect(run.stderr).toMatch(/^vm-pool: 3 created, 0 reused, 2 deleted, 0 leaked, 1 kept after a failed test$/m)
      expect(run.stderr).toContain(
        `vm-pool: ${failed} was kept running (keepOnFailure: test "fails inside the block of its fresh VM" failed); the next \`npx vm-pool gc --provider fake\` deletes it; shell: npx vm-pool ssh ${failed} --provider fake; delete it now: npx vm-pool rm ${failed} --provider fake`,
      )
      await collectGarbage({ provider: fakeProvider({ stateDir: run.stateDir }), stateDir: run.stateDir })
      expect(run.liveVms()).toEqual([])
    })
  })
}

function output(run: FixtureRun): string {
  return `exit ${run.exitCode} ${run.signal ?? ''}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`
}
