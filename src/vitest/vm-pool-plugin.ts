import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Plugin } from 'vitest/config'
import { getProviderNames } from '../providers/provider-registry.js'
import { resolveReportPath, resolveVmPoolOptions, type VmPoolOptions } from './vm-pool-options.js'
import { createVmPoolRunner } from './vm-pool-runner.js'
import { getVmAwareTimeouts } from './vm-aware-timeouts.js'
import { getVitestVmPoolRun } from './vitest-run-registry.js'
import type { VitestVmPoolRun } from './vitest-vm-pool-run.js'

/** Compiled beside this file in dist/; referenced by absolute path so it works from any project root. */
const GLOBAL_SETUP_FILE = fileURLToPath(new URL('./global-setup.js', import.meta.url))

/**
 * The Vite plugin that gives every Vitest worker slot a VM:
 * `plugins: [vmPool({ provider: 'qemu', prewarm: true, report: 'vm-pool-report.json' })]`.
 * It sets `test.pool` to vm-pool's runner (Vitest's forks or threads workers bound to a slot VM),
 * adds the globalSetup that prewarms and tears down, and prints the end-of-run summary on close.
 * Options are validated here, so a typo fails when the config loads, naming the key.
 */
export function vmPool(options: VmPoolOptions = {}): Plugin {
  const resolved = resolveVmPoolOptions(options, getProviderNames())
  let run: VitestVmPoolRun | undefined
  return {
    name: 'vm-pool',
    async config(config) {
      const root = resolve(config.test?.root ?? config.root ?? process.cwd())
      const final = Object.freeze({ ...resolved, report: resolveReportPath(resolved.report, root) })
      // Workers inherit the main process environment, so one assignment scales every timeout of the run.
      if (final.timeoutScale !== undefined) process.env.VM_POOL_TIMEOUT_SCALE = String(final.timeoutScale)
      run = getVitestVmPoolRun(final)!
      // Loaded here, not at import time: importing vm-pool/vitest in a test file must not load Vitest's node side.
      const { ForksPoolWorker, ThreadsPoolWorker } = await import('vitest/node')
      const base = final.workers === 'threads' ? ThreadsPoolWorker : ForksPoolWorker
      return {
        test: {
          pool: createVmPoolRunner(run, base, final.workers),
          globalSetup: [GLOBAL_SETUP_FILE],
          // Vitest's 5 s default is shorter than one boot: VM-aware defaults, never over the user's own.
          ...getVmAwareTimeouts(config.test ?? {}, final.timeoutScale),
        },
      }
    },
    configureVitest({ vitest }) {
      // After globalSetup teardown and after the workers stopped: the last chance to delete what is
      // left and to print the summary. finish() runs once, whoever calls it first.
      vitest.onClose(async () => {
        await run?.finish()
      })
    },
  }
}
