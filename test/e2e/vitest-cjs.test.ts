import { execFileSync } from 'node:child_process'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, test } from 'vitest'
import { getVitestBinaries, runFixture, type FixtureRun } from '../helpers/vitest-fixture.js'

/**
 * A CommonJS project (fixtures/vitest-cjs, no `"type": "module"`) with the package installed as
 * node_modules/vm-pool: Vitest bundles its config as CommonJS and require()s `vm-pool/vitest`, a plain
 * .cjs script require()s `vm-pool`, and tsc type-checks the project through the `require` conditions.
 * Each of these failed while package.json `exports` offered only the `import` condition.
 */
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const binaries = getVitestBinaries()

for (const vitest of binaries) {
  describe.skipIf(vitest.missing && !process.env.CI)(`Vitest ${vitest.label}${vitest.missing && !process.env.CI ? ` (skipped: ${vitest.missing})` : ''}`, () => {
    if (vitest.missing) {
      if (process.env.CI) throw new Error(vitest.missing)
      console.warn(`skipping the Vitest ${vitest.label} e2e runs: ${vitest.missing}`)
    }

    test('a CommonJS project runs the plugin, require()s vm-pool and type-checks', { timeout: 300_000 }, async () => {
      const run = await runFixture('cjs', { vitest })
      expect(run.exitCode, output(run)).toBe(0)
      expect(run.stdout).toMatch(/Tests\s+1 passed/)
      // maxWorkers 2 but one file: one worker VM (prewarm boots no more than the files) and one fresh VM.
      expect(run.report()).toMatchObject({ created: 2, leaked: 0 })
      expect(run.report().vms.filter((vm) => vm.kind === 'worker')).toHaveLength(1)
      expect(run.liveVms()).toEqual([])

      const required = execFileSync(process.execPath, ['check-require.cjs'], { cwd: run.cwd, encoding: 'utf8' })
      expect(JSON.parse(required)).toEqual({ createPool: 'function', fakeProvider: 'function', vmPool: 'function', freshVm: 'function' })

      // The project's .ts files are CommonJS to tsc (no "type": "module"): types come through `require`.
      const tsc = join(REPO, 'node_modules/typescript/bin/tsc')
      const typecheck = (() => {
        try {
          return { code: 0, out: execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: run.cwd, encoding: 'utf8' }) }
        } catch (error) {
          const failed = error as { status: number; stdout: string }
          return { code: failed.status, out: failed.stdout }
        }
      })()
      expect(typecheck, typecheck.out).toEqual({ code: 0, out: '' })
    })
  })
}

function output(run: FixtureRun): string {
  return `exit ${run.exitCode} ${run.signal ?? ''}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`
}
