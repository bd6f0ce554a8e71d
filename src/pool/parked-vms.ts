import type { Vm } from '../providers/vm-provider.js'
import type { HeldVms } from './held-vms.js'
import type { LeaseEntry } from './lease-store.js'

/**
 * A VM this process handed back warm keeps its connection this long (not scaled; a process that ends without
 * `drain()` may wait this long for it to close). If this process adopts the
 * same VM again within it and nobody held the VM in between, it gets the connection back without a new
 * connect and health check (for QEMU: an SSH handshake and an exec, ~0.3 s under TCG). A VM that died in that
 * window is then noticed by the caller's first exec instead of by the check.
 */
export const PARKED_CONNECTION_TTL_MS = 2_000
/**
 * Another pool's VM handed back less than this ago is left to that pool: one that cycles acquire/release takes
 * its own back within milliseconds, and taking it would make that pool take someone else's in turn, a chain of
 * adoptions (each a connect and a check) that never ends. A pool that finds only such VMs waits out the rest of
 * this once, then takes one if still idle (its pool did not come back), else boots. Not scaled.
 */
export const PARKED_GRACE_MS = 250

interface Parked {
  vm: Vm
  /** The idle entry our hand-back wrote: the VM is untouched since while the table still holds exactly this. */
  entry: LeaseEntry
  timer: NodeJS.Timeout
}

/**
 * The VMs this pool handed back warm, with their connections, for PARKED_CONNECTION_TTL_MS: the warm cycle
 * takes them back first (docs/pool.md, "The warm cycle"), and other pools leave them alone for a moment.
 */
export class ParkedVms {
  readonly #held: HeldVms
  readonly #parked = new Map<string, Parked>()

  constructor(held: HeldVms) {
    this.#held = held
  }

  /** The one handed back last, if any is still parked. */
  last(): LeaseEntry | undefined {
    let last: LeaseEntry | undefined
    for (const parked of this.#parked.values()) last = parked.entry
    return last
  }

  /** The idle entry we parked `name` with. */
  entry(name: string): LeaseEntry | undefined {
    return this.#parked.get(name)?.entry
  }

  park(name: string, vm: Vm, entry: LeaseEntry): void {
    void this.unpark(name)?.vm.close?.().catch(() => {})
    const timer = setTimeout(() => void this.unpark(name)?.vm.close?.().catch(() => {}), PARKED_CONNECTION_TTL_MS)
    // The timer keeps nothing alive; the connection may, until the timer closes it.
    timer.unref()
    this.#parked.set(name, { vm, entry, timer })
  }

  unpark(name: string): { vm: Vm; entry: LeaseEntry } | undefined {
    const parked = this.#parked.get(name)
    if (!parked) return undefined
    clearTimeout(parked.timer)
    this.#parked.delete(name)
    // Claimed again (noted already), or no longer ours to come back to: either way not marked as parked.
    this.#held.unmark(name)
    return parked
  }

  /**
   * Which idle VM to adopt first (`pickIdleToAdopt` takes the highest rank, then the most recently idle):
   * 2: ours on a kept connection, untouched since (no connect, no check);
   * 1: any other, except those another pool handed back within PARKED_CONNECTION_TTL_MS, which it likely
   *    still keeps a connection to and comes back for (taking one makes that pool take someone else's in turn);
   * below 0: those, the longest idle first (its pool has likely found another VM meanwhile);
   * not a candidate yet (how long until it is): those handed back within PARKED_GRACE_MS.
   */
  rank(entry: LeaseEntry, now: number, runId: string): number | { graceLeftMs: number } {
    if (this.#parked.get(entry.name)?.entry.idleSince === entry.idleSince) return 2
    const idleSince = entry.idleSince === undefined ? Number.NaN : Date.parse(entry.idleSince)
    if (entry.runId === runId || !(now - idleSince < PARKED_CONNECTION_TTL_MS)) return 1
    if (now - idleSince < PARKED_GRACE_MS) return { graceLeftMs: PARKED_GRACE_MS - (now - idleSince) }
    return -1 + (now - idleSince) / PARKED_CONNECTION_TTL_MS
  }

  /** Close the kept connections (drain). */
  async closeAll(): Promise<void> {
    await Promise.allSettled([...this.#parked.keys()].map((name) => this.unpark(name)?.vm.close?.()))
  }
}
