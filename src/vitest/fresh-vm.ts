import { onTestFinished } from 'vitest'
import type { ExecOptions, ExecResult, Vm, VmRecord, VmSpec } from '../providers/vm-provider.js'
import { getBrokerClient, getWorkerContext, getWorkerProvider } from './worker-vm-context.js'

/** What `freshVm()` may set; the name is chosen by vm-pool (`vitest-fresh-<runId>-<n>`). */
export type FreshVmSpec = Omit<VmSpec, 'name'>

/** A throwaway VM owned by the Vitest main process; `await using` deletes it at the end of the block. */
export interface FreshVm extends Vm {
  /** Delete the VM now (idempotent). `[Symbol.asyncDispose]` does the same. */
  delete(): Promise<void>
}

/**
 * A new VM for this test alone. It is deleted at the end of its `await using` block, or when the
 * test finishes at the latest; if the worker crashes, the main process (which created it through
 * the broker) deletes it. Called outside a test (e.g. in `beforeAll`), it lives until the worker stops.
 */
export async function freshVm(spec: FreshVmSpec = {}): Promise<FreshVm> {
  const context = getWorkerContext('freshVm')
  let cleanup: (() => Promise<void>) | undefined
  try {
    // Registered before the first await: Vitest finds the current test synchronously.
    onTestFinished(() => cleanup?.())
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
  let deleting: Promise<void> | undefined
  const remove = () => {
    deleting ??= (async () => {
      try {
        await vm.close?.()
      } finally {
        await client.delete(record.name)
      }
    })()
    return deleting
  }
  cleanup = remove
  return createFreshVm(vm, record, remove)
}

function createFreshVm(vm: Vm, record: VmRecord, remove: () => Promise<void>): FreshVm {
  const fresh: FreshVm = {
    name: vm.name,
    provider: vm.provider,
    record,
    exec: (command: string | string[], options?: ExecOptions): Promise<ExecResult> => vm.exec(command, options),
    close: async () => vm.close?.(),
    delete: remove,
    [Symbol.asyncDispose]: remove,
  }
  if (vm.putFile) fresh.putFile = (path, data) => vm.putFile!(path, data)
  if (vm.getFile) fresh.getFile = (path) => vm.getFile!(path)
  return fresh
}
