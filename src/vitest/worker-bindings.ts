import type { VmLease, VmPool } from '../pool/vm-pool.js'
import type { VmPoolReportBuilder } from './vm-pool-report.js'

/** The slot's current VM: its lease from the pool and which of the slot's VMs it is (1 = the first). */
interface SlotLease {
  generation: number
  lease: Promise<VmLease>
}

/**
 * Worker slot → VM (see docs/vitest.md, "How it works"). Vitest reuses a slot id (`VITEST_POOL_ID`)
 * for every worker of that slot, so the VM belongs to the slot, not to a worker: the first worker of a
 * slot acquires it from the pool and every later one gets the same lease. The pool knows the VM and its
 * lease; this knows which slot holds which lease and how many VMs the slot had (a replacement after a
 * crash is acquired under a new key, `<slot>-<n>`, so it never gets the crashed VM's name).
 */
export class WorkerBindings {
  readonly #pool: VmPool
  readonly #report: VmPoolReportBuilder
  readonly #slots = new Map<number, SlotLease>()
  /** Slot number → VMs it had so far (survives a replacement, so keys never repeat). */
  readonly #generations = new Map<number, number>()
  /** A dead worker's cleanup (its VM, its fresh VMs), awaited by the next worker of that slot. */
  readonly #settling = new Map<number, Promise<void>>()

  constructor(pool: VmPool, report: VmPoolReportBuilder) {
    this.#pool = pool
    this.#report = report
  }

  /** The slot's VM: booted (or adopted warm) on first use, the same until it is replaced. */
  acquire(slot: number): Promise<VmLease> {
    let current = this.#slots.get(slot)
    if (!current) {
      const generation = (this.#generations.get(slot) ?? 0) + 1
      this.#generations.set(slot, generation)
      const started = performance.now()
      const lease = this.#pool.acquire(generation === 1 ? slot : `${slot}-${generation}`).then((acquired) => {
        this.#report.addVm(acquired.vm.record, 'worker', slot, acquired.adopted ? null : performance.now() - started, acquired.adopted)
        return acquired
      })
      current = { generation, lease }
      this.#slots.set(slot, current)
      const created = current
      // A failed boot must not stick: the next acquire tries again.
      lease.catch(() => {
        if (this.#slots.get(slot) === created) this.#slots.delete(slot)
      })
    }
    return current.lease
  }

  /**
   * The worker of `slot` using `vmName` died: the VM may be in any state (half-written files, a test's
   * processes still running), so it is deleted, never kept warm, and the slot's next worker gets a new one.
   * Only that VM: if the slot has already moved on to another, nothing happens. Never throws.
   */
  async replace(slot: number, vmName: string): Promise<void> {
    const current = this.#slots.get(slot)
    const lease = await current?.lease.catch(() => undefined)
    if (!lease || lease.name !== vmName || this.#slots.get(slot) !== current) return
    this.#slots.delete(slot)
    this.#report.markReplacedAfterCrash(vmName)
    process.stderr.write(`vm-pool: the worker of slot ${slot} exited unexpectedly; replacing its VM ${vmName}\n`)
    try {
      await lease.release({ discard: true })
      this.#report.markDeleted(vmName)
    } catch (error) {
      process.stderr.write(`vm-pool: could not delete ${vmName}: ${String(error)}\n`)
    }
  }

  /** The slot's next worker waits for `cleanup` (chained after any cleanup already pending there). */
  settleBefore(slot: number, cleanup: () => Promise<void>): void {
    const previous = this.#settling.get(slot) ?? Promise.resolve()
    const done = previous.then(cleanup).catch(() => {})
    this.#settling.set(slot, done)
  }

  /** What the slot's next worker waits for before it is bound: it must not meet a dead worker's VMs. */
  async settledFor(slot: number): Promise<void> {
    await this.#settling.get(slot)
  }

  /** Every pending cleanup, for the end of the run. */
  async settled(): Promise<void> {
    await Promise.all(this.#settling.values())
  }
}
