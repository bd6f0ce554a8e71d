import type { ResolvedVmPoolOptions } from './vm-pool-options.js'
import { VitestVmPoolRun } from './vitest-vm-pool-run.js'

/**
 * The run of this Vitest process lives on `globalThis[Symbol.for('vm-pool.vitest')]`: Vitest evaluates
 * modules loaded by both the config and the module runner twice in the main process, and the plugin,
 * the pool runner and the globalSetup module must all see the same run.
 */
const REGISTRY = Symbol.for('vm-pool.vitest')

interface VitestRegistry {
  run: VitestVmPoolRun | undefined
}

function getRegistry(): VitestRegistry {
  const holder = globalThis as typeof globalThis & { [REGISTRY]?: VitestRegistry }
  holder[REGISTRY] ??= { run: undefined }
  return holder[REGISTRY]
}

/** The run of this Vitest process: one per `vitest run`; a finished one is replaced (watch mode restarts). */
export function getVitestVmPoolRun(options?: ResolvedVmPoolOptions): VitestVmPoolRun | undefined {
  const registry = getRegistry()
  if (options && (!registry.run || registry.run.isFinished || JSON.stringify(registry.run.options) !== JSON.stringify(options))) {
    registry.run = new VitestVmPoolRun(options)
  }
  return registry.run
}
