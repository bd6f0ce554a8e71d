import { test as baseTest, type TestAPI } from 'vitest'
import { VmPoolError } from '../errors.js'
import type { Vm } from '../providers/vm-provider.js'
import { getWorkerContext, getWorkerProvider } from './worker-vm-context.js'

export interface VmPoolFixtures {
  /**
   * The VM of this worker slot: the same VM for every file that runs in the slot, with `isolate`
   * on or off. Tests share it: leave it as you found it, or use `freshVm()`.
   */
  workerVm: Vm
}

function createTest(): TestAPI<VmPoolFixtures> {
  return baseTest.extend<VmPoolFixtures>({
  workerVm: [
    // eslint-disable-next-line no-empty-pattern -- Vitest reads the fixture's dependencies from this pattern
      async ({}, use) => {
      const context = getWorkerContext('workerVm')
      // Binding the slot VM failed in the main process: the same error, once per file that asks for it.
      if (context.error) throw VmPoolError.fromJSON(context.error)
      if (!context.record) throw new VmPoolError({ code: 'VMPOOL_INTERNAL', operation: 'workerVm', message: `slot ${context.slot} has no VM` })
      const provider = await getWorkerProvider(context)
      const vm = await provider.connect(context.record)
      try {
        await use(vm)
      } finally {
        // Only this worker's connection: the VM itself belongs to the slot, in the main process.
        await vm.close?.()
      }
    },
    { scope: 'worker' },
  ],
  }) as TestAPI<VmPoolFixtures>
}

let extended: TestAPI<VmPoolFixtures> | undefined
const getTest = () => (extended ??= createTest())

/**
 * Vitest's `test` with the worker-scoped `workerVm` fixture. Made on first use: the config file
 * imports this module too (for `vmPool`), and `test.extend` throws outside a test worker.
 */
export const test: TestAPI<VmPoolFixtures> = new Proxy(function vmPoolTest() {} as unknown as TestAPI<VmPoolFixtures>, {
  apply: (_target, thisArg, args) => Reflect.apply(getTest() as unknown as (...a: unknown[]) => unknown, thisArg, args),
  get: (_target, property) => Reflect.get(getTest(), property),
  has: (_target, property) => Reflect.has(getTest(), property),
})

export { expect } from 'vitest'
