import type { Vm } from '../providers/vm-provider.js'

/** Methods that do not reach into the VM: closing our own connections is always allowed. */
const UNFENCED = new Set<PropertyKey>(['close', Symbol.asyncDispose])

/**
 * The `Vm` a lease hands out: every method that reaches into the VM (exec, putFile, getFile, and whatever a
 * provider adds) first awaits `assertHeld`, which throws VMPOOL_LEASE_LOST once fencing took the VM from this
 * process (see pool-leases.ts). A Proxy, so methods providers add later are fenced too. An exec already
 * running when the lease is lost is not stopped: it finishes; the next call fails.
 */
export function fenceVm(current: () => Vm, assertHeld: () => Promise<void>): Vm {
  // `current()`: the held VM's connection, which `reset()` may replace; every access goes to the current one.
  return new Proxy(current(), {
    get(_initial, property) {
      const target = current()
      const value: unknown = Reflect.get(target, property, target)
      if (typeof value !== 'function' || UNFENCED.has(property)) return typeof value === 'function' ? value.bind(target) : value
      return async (...args: unknown[]) => {
        await assertHeld()
        return (value as (...a: unknown[]) => unknown).apply(target, args)
      }
    },
  })
}
