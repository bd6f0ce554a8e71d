import type { Vm, VmProvider, VmRecord } from '../providers/vm-provider.js'
import { withTimeout } from '../util/timeouts.js'

/**
 * The health check of an idle warm VM, for the pool before it adopts one and for `vm-pool gc`: connect and
 * run `true` within a named timeout. Resolves with the connected VM (the caller closes it); rejects with an
 * error saying what failed, after closing what it opened.
 */
export async function connectAndCheck(provider: Pick<VmProvider, 'name' | 'connect'>, record: VmRecord, timeout: { name: string; ms: number }): Promise<Vm> {
  const vm = await provider.connect(record)
  try {
    await checkConnected(vm, provider.name, record.name, timeout)
    return vm
  } catch (error) {
    await vm.close?.().catch(() => {})
    throw error
  }
}

/** `true` on a connection the caller has; rejects saying what failed. */
export async function checkConnected(vm: Vm, providerName: string, name: string, timeout: { name: string; ms: number }): Promise<true> {
  const result = await withTimeout(vm.exec('true', { timeoutMs: timeout.ms }), { name: timeout.name, ms: timeout.ms, what: `${name} to run \`true\``, provider: providerName, vm: name })
  if (result.exitCode !== 0) throw new Error(`\`true\` exited with ${result.exitCode}${result.timedOut ? ' (timed out)' : ''}`)
  return true
}
