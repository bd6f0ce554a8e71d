import { randomBytes } from 'node:crypto'
import type { VmProvider, VmRecord, VmSpec } from '../providers/vm-provider.js'
import { validateVmName } from '../util/vm-name.js'

/**
 * Where the Vitest integration gets its VMs from. Everything the plugin needs from the pool layer,
 * and nothing else, so the main-process run state does not care how VMs are leased.
 */
export interface SlotVmSource {
  /** Identifies this run in VM names. */
  readonly runId: string
  /** The slot's VM: booted (or adopted warm) on first use, the same one until `discard`. */
  acquire(slot: number): Promise<SlotVm>
  /** The slot's VM state is unknown (its worker crashed): delete it; the next `acquire` gets a new one. */
  discard(slot: number): Promise<void>
  /** A throwaway VM, deleted by `deleteFresh` or `drain`. */
  fresh(spec: Omit<VmSpec, 'name'>): Promise<VmRecord>
  deleteFresh(name: string): Promise<void>
  /** Delete everything (or hand worker VMs back warm). Returns the names kept warm. */
  drain(): Promise<{ keptWarm: string[] }>
}

export interface SlotVm {
  record: VmRecord
  /** True when this VM was booted by an earlier run and adopted warm. */
  adopted: boolean
}

export interface SlotVmSourceEvents {
  onCreated?(record: VmRecord, kind: 'worker' | 'fresh', bootMs: number): void
  onDeleted?(name: string): void
}

/**
 * A `SlotVmSource` straight on a provider: no lease store, no warm hand-over, no reaper.
 * Used until the pool (`createPool`, issue #4) is available.
 */
export function providerSlotVmSource(options: { provider: VmProvider; prefix: string; spec: Omit<VmSpec, 'name'>; events?: SlotVmSourceEvents }): SlotVmSource {
  const runId = Array.from(randomBytes(8), (byte) => (byte % 36).toString(36)).join('')
  const freshPrefix = options.prefix === 'vitest-worker' ? 'vitest-fresh' : options.prefix
  const slots = new Map<number, Promise<SlotVm>>()
  const fresh = new Set<string>()
  let freshCount = 0
  const create = async (name: string, spec: Omit<VmSpec, 'name'>, kind: 'worker' | 'fresh') => {
    const started = performance.now()
    const record = await options.provider.create({ ...spec, name: validateVmName(name, options.provider.name) })
    options.events?.onCreated?.(record, kind, performance.now() - started)
    return record
  }
  const remove = async (name: string) => {
    await options.provider.delete(name)
    options.events?.onDeleted?.(name)
  }
  return {
    runId,
    acquire(slot) {
      let vm = slots.get(slot)
      if (!vm) {
        vm = create(`${options.prefix}-${runId}-${slot}`, options.spec, 'worker').then((record) => ({ record, adopted: false }))
        // a failed boot must not stick: the next acquire tries again
        vm.catch(() => slots.delete(slot))
        slots.set(slot, vm)
      }
      return vm
    },
    async discard(slot) {
      const vm = slots.get(slot)
      slots.delete(slot)
      const settled = await vm?.catch(() => undefined)
      if (settled) await remove(settled.record.name)
    },
    async fresh(spec) {
      const name = `${freshPrefix}-${runId}-${++freshCount}`
      fresh.add(name)
      try {
        return await create(name, spec, 'fresh')
      } catch (error) {
        fresh.delete(name)
        await options.provider.delete(name).catch(() => {})
        throw error
      }
    },
    async deleteFresh(name) {
      if (!fresh.delete(name)) return
      await remove(name)
    },
    async drain() {
      const names: string[] = []
      for (const vm of slots.values()) {
        const settled = await vm.catch(() => undefined)
        if (settled) names.push(settled.record.name)
      }
      slots.clear()
      names.push(...fresh)
      fresh.clear()
      await Promise.all(names.map((name) => remove(name)))
      return { keptWarm: [] }
    },
  }
}
