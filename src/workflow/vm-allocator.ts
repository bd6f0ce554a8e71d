import type { Vm, VmProvider, VmSpec } from '../providers/vm-provider.js'
import type { VmPool } from '../pool/vm-pool.js'

/** One VM held by one session, and how to give it back. */
export interface VmAllocation {
  readonly vm: Vm
  /** `keepVm: true` leaves the VM running (debug mode) and only drops this process's connection; the same word as `WorkflowSession.release({ keepVm })`. */
  release(options: { keepVm: boolean }): Promise<void>
}

/**
 * Where sessions get their VMs. The session manager only ever calls `allocate` once per session, so
 * swapping the source (the cross-process pool's `fresh()`, which records leases a reaper can sweep after
 * Ctrl-C) means passing another implementation of this one method.
 */
export interface VmAllocator {
  allocate(spec: VmSpec): Promise<VmAllocation>
}

/** The default: `provider.create` + `connect`, and `delete` on release. */
export function providerVmAllocator(provider: VmProvider): VmAllocator {
  return {
    async allocate(spec: VmSpec): Promise<VmAllocation> {
      const record = await provider.create(spec)
      let vm: Vm
      try {
        vm = await provider.connect(record)
      } catch (error) {
        // A VM we cannot reach is still a VM: delete it rather than leak it, and report the connect error.
        await provider.delete(record.name).catch(() => {})
        throw error
      }
      return {
        vm,
        async release({ keepVm }) {
          try {
            await vm.close?.()
          } finally {
            if (!keepVm) await provider.delete(vm.name)
          }
        },
      }
    },
  }
}

/**
 * Sessions backed by the cross-process pool: every VM is recorded in the lease store under this
 * process, so the pool's reaper deletes it if the process dies (Ctrl-C, SIGKILL) and `vm-pool gc`
 * never mistakes a running workflow's VM for an orphan. The session's name is used as is.
 */
export function poolVmAllocator(pool: Pick<VmPool, 'fresh'>): VmAllocator {
  return {
    async allocate(spec: VmSpec): Promise<VmAllocation> {
      const vm = await pool.fresh(spec)
      return {
        vm,
        release: ({ keepVm }) => (keepVm ? vm.keep() : vm.delete()),
      }
    },
  }
}
