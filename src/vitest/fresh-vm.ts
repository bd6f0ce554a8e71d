import { onTestFinished } from 'vitest'
import type { FreshVm } from '../pool/vm-pool.js'
import type { Vm, VmRecord, VmSpec } from '../providers/vm-provider.js'
import { delegateVmOperations } from '../providers/delegate-vm.js'
import type { BrokerClient } from './broker-client.js'
import { getBrokerClient, getWorkerContext, getWorkerProvider } from './worker-vm-context.js'

/** What `freshVm()` may set; the name is chosen by vm-pool (`vitest-fresh-<runId>-<n>`). */
export type FreshVmSpec = Omit<VmSpec, 'name'>

/**
 * A new VM for this test alone. It is deleted at the end of its `await using` block, or when the
 * test finishes at the latest; if the worker crashes, the main process (which created it through
 * the broker) deletes it. Called outside a test (e.g. in `beforeAll`), it lives until the worker stops.
 * `keep()` leaves it running after the run (to look at it): see docs/vitest.md.
 */
export async function freshVm(spec: FreshVmSpec = {}): Promise<FreshVm> {
  const context = getWorkerContext('freshVm')
  let cleanup: ((failedTest: string | undefined) => Promise<void>) | undefined
  let inTest = false
  try {
    // Registered before the first await: Vitest finds the current test synchronously.
    onTestFinished(({ task }) => cleanup?.(task.result?.state === 'fail' ? JSON.stringify(task.name) : undefined))
    inTest = true
  } catch {
    // not inside a test: the broker deletes it when this worker stops
  }
  const client = getBrokerClient(context)
  const record = await client.create(spec)
  let vm: Vm
  try {
    vm = await (await getWorkerProvider(context)).connect(record)
  } catch (error) {
    await client.delete(record.name).catch(() => {})
    throw error
  }
  // keepOnFailure: the end of an `await using` block comes before the test's result (an assertion that
  // throws in the block disposes first), so the block only marks it; the test's end decides.
  const deferDispose = context.keepOnFailure === true && inTest
  const { fresh, keepFor } = createFreshVm(vm, record, client, deferDispose)
  cleanup = (failedTest) => (failedTest !== undefined && context.keepOnFailure ? keepFor(`test ${failedTest}`) : fresh.delete())
  return fresh
}

/**
 * The pool's `FreshVm` on the worker side: the VM is the main process's (it holds the lease), so
 * `delete()` and `keep()` ask the broker. The first of them decides; the other is then a no-op, as
 * with `pool.fresh()`.
 */
function createFreshVm(vm: Vm, record: VmRecord, client: BrokerClient, deferDispose: boolean): { fresh: FreshVm; keepFor: (reason: string) => Promise<void> } {
  let settled: Promise<void> | undefined
  const settle = (ask: (name: string) => Promise<void>) => {
    settled ??= (async () => {
      try {
        await vm.close?.()
      } finally {
        await ask(record.name)
      }
    })()
    return settled
  }
  const remove = () => settle((name) => client.delete(name))
  const fresh: FreshVm = {
    name: vm.name,
    provider: vm.provider,
    record,
    ...delegateVmOperations(vm),
    close: async () => vm.close?.(),
    delete: remove,
    keep: () => settle((name) => client.keep(name)),
    [Symbol.asyncDispose]: deferDispose ? async () => void (await vm.close?.()) : remove,
  }
  return { fresh, keepFor: (reason) => settle((name) => client.keep(name, reason)) }
}
