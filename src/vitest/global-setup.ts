import type { TestProject } from 'vitest/node'
import { VmPoolError } from '../errors.js'
import { getVitestVmPoolRun } from './vitest-run-registry.js'

/**
 * The globalSetup module `vmPool()` adds (by absolute path into dist/). It runs in the Vitest main
 * process before any test file: it starts the run (provider check, freshVm broker) and prewarms
 * one VM per worker slot, so a provider that is missing or an image that does not boot fails here,
 * once, instead of in every test file. Its teardown deletes the run's VMs.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const run = getVitestVmPoolRun()
  if (!run) {
    throw new VmPoolError({
      code: 'VMPOOL_INVALID_OPTIONS',
      operation: 'vitest setup',
      message: 'the vm-pool globalSetup ran without the vmPool() plugin',
      hint: "add plugins: [vmPool({ provider: 'qemu' })] to vitest.config.ts instead of listing the globalSetup file",
    })
  }
  try {
    await run.start()
    if (run.options.prewarm) await run.prewarm(getPrewarmCount(project))
  } catch (error) {
    // No teardown is returned when setup throws: clean up what prewarm already booted.
    await run.finish()
    throw error
  }
  return async () => {
    await run.finish()
  }
}

/**
 * One VM per worker slot, but no more slots than test files: Vitest never runs more workers than files.
 * The files of this run are known here: Vitest (4.1 and 5) collects their paths into its state before it
 * runs globalSetup (`TestRun.start` → `state.collectPaths`). That state is not public API, so read it
 * defensively; without it, maxWorkers.
 */
function getPrewarmCount(project: TestProject): number {
  const state = (project.vitest as unknown as { state?: { getPaths?: () => unknown } }).state
  const paths = state?.getPaths?.()
  const files = Array.isArray(paths) && paths.length > 0 ? paths.length : Infinity
  return Math.min(getMaxWorkers(project), files)
}

function getMaxWorkers(project: TestProject): number {
  const value = project.config.maxWorkers ?? project.vitest.config.maxWorkers
  return typeof value === 'number' && Number.isInteger(value) && value > 0 ? value : 1
}
