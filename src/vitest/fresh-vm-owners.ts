import { VmPoolError } from '../errors.js'
import type { FreshVm, VmPool } from '../pool/vm-pool.js'
import type { VmProvider, VmRecord, VmSpec } from '../providers/vm-provider.js'
import type { VmPoolReportBuilder } from './vm-pool-report.js'

interface OwnedFreshVm {
  owner: string
  vm: FreshVm
}

/**
 * Which live worker owns which fresh VM — what the broker needs and the pool cannot know (see
 * docs/vitest.md, "How it works"). The pool (`pool.fresh`) creates and deletes the VMs and holds their
 * leases; this keeps the handle it returned, by name, with the worker that asked. A worker that goes
 * away takes its fresh VMs with it, so a crashed worker leaks none.
 */
export class FreshVmOwners {
  readonly #pool: VmPool
  readonly #provider: VmProvider
  readonly #report: VmPoolReportBuilder
  /** Live workers (owner id → slot): the broker serves only these. */
  readonly #workers = new Map<string, number>()
  readonly #vms = new Map<string, OwnedFreshVm>()

  constructor(pool: VmPool, provider: VmProvider, report: VmPoolReportBuilder) {
    this.#pool = pool
    this.#provider = provider
    this.#report = report
  }

  addWorker(owner: string, slot: number): void {
    this.#workers.set(owner, slot)
  }

  /** A new VM for `owner`, booted by the pool in this (the main) process; the worker connects on its own. */
  async create(owner: string, spec: Omit<VmSpec, 'name'>): Promise<VmRecord> {
    if (!this.#workers.has(owner)) throw new VmPoolError({ code: 'VMPOOL_INVALID_OPTIONS', operation: 'freshVm', message: `unknown worker ${JSON.stringify(owner)}` })
    const started = performance.now()
    const vm = await this.#pool.fresh(spec)
    this.#report.addVm(vm.record, 'fresh', this.#workers.get(owner) ?? null, performance.now() - started, false)
    // The pool connected it here; only the worker uses it.
    await vm.close?.()
    // The worker died while the VM booted: nobody will delete it but us.
    if (!this.#workers.has(owner)) {
      await this.#delete(vm)
      return vm.record
    }
    this.#vms.set(vm.name, { owner, vm })
    return vm.record
  }

  /** `owner` is done with `name` (idempotent; a VM of another worker is left alone). */
  async delete(owner: string, name: string): Promise<void> {
    const owned = this.#take(owner, name)
    if (owned) await this.#delete(owned.vm)
  }

  /**
   * `owner` keeps `name` running: the pool forgets its lease (neither the run's teardown nor the
   * reaper deletes it) and so does this map (the worker's exit does not either).
   */
  async keep(owner: string, name: string, reason?: string): Promise<void> {
    const owned = this.#take(owner, name)
    if (!owned) return
    await owned.vm.keep()
    this.#report.markKept(name, reason)
  }

  /** The worker is gone (stopped or crashed): delete the fresh VMs it still owned. Never throws. */
  async removeWorker(owner: string): Promise<void> {
    this.#workers.delete(owner)
    const orphans = [...this.#vms.values()].filter((owned) => owned.owner === owner)
    await Promise.all(
      orphans.map(async ({ vm }) => {
        this.#vms.delete(vm.name)
        await this.#delete(vm).catch((error: unknown) => process.stderr.write(`vm-pool: could not delete ${vm.name} of a stopped worker: ${String(error)}\n`))
      }),
    )
  }

  #take(owner: string, name: string): OwnedFreshVm | undefined {
    const owned = this.#vms.get(name)
    if (owned?.owner !== owner) return undefined
    this.#vms.delete(name)
    return owned
  }

  async #delete(vm: FreshVm): Promise<void> {
    await vm.delete()
    this.#report.markDeleted(vm.name)
  }
}
