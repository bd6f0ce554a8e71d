import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { expect, test } from 'vitest'
import { getQemuSkipReason } from '../helpers/qemu.js'
import { getVitestBinaries, runFixture } from '../helpers/vitest-fixture.js'

/** Real `vitest run` on real QEMU VMs: 2 files, maxWorkers 1 → one VM, booted once, reused by the second file. */
const skipReason = getQemuSkipReason()
const vitest5 = getVitestBinaries().find((binary) => binary.label === '5')!

test.skipIf(skipReason !== undefined)('Vitest 5 on QEMU: one slot, one VM for both files', { timeout: 600_000 }, async () => {
  const run = await runFixture('qemu', { vitest: vitest5 })
  expect(run.exitCode, `${run.stdout}\n${run.stderr}`).toBe(0)
  const results = Object.values(run.results())
  expect(results.map((r) => r.file).sort()).toEqual(['one.test.ts', 'two.test.ts'])
  expect(new Set(results.map((r) => r.vm)).size).toBe(1)
  const bootIds = results.map((r) => readFileSync(join(run.resultsDir, `${r.file}.boot-id`), 'utf8'))
  expect(bootIds[0]).toMatch(/^[0-9a-f-]{36}$/)
  expect(bootIds[1]).toBe(bootIds[0])
  const report = run.report()
  expect(report).toMatchObject({ created: 1, reused: 1, deleted: 1, leaked: 0 })
  expect(report.vms[0]!.bootMs).toBeGreaterThan(0)
  console.info(`vm-pool qemu e2e: boot ${report.vms[0]!.bootMs} ms`)
  expect(run.stderr).toMatch(/^vm-pool: 1 created, 1 reused, 1 deleted, 0 leaked$/m)
  expect(run.liveVms('qemu')).toEqual([])
})
