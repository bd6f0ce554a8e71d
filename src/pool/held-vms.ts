import { createDebug } from '../util/debug.js'
import { cloneEntry, type LeaseEntry } from './lease-store.js'
import type { ResolvedPoolOptions } from './pool-options.js'
import { ReaperHandle } from './reaper.js'

const debug = createDebug('vm-pool:pool')

/**
 * The VMs this process holds, as our own copy of each lease entry (put back by `restoreHeld` when the lease
 * file was lost, rebuilt or restored from an old copy), and the watchdog whose marker names them.
 * The watchdog starts before the first VM is reserved, so no window exists where a VM is ours and unwatched.
 */
export class HeldVms {
  readonly #config: ResolvedPoolOptions
  readonly #entries = new Map<string, LeaseEntry>()
  /** Handed back warm by swap and still parked with us: kept in the marker (see `forget`). */
  readonly #stillMarked = new Set<string>()
  /** The names the marker was last written with, sorted and joined: an unchanged list is not written again. */
  #written: string | undefined
  #reaper: Promise<ReaperHandle | undefined> | undefined
  #handle: ReaperHandle | undefined
  #flush: NodeJS.Immediate | undefined

  constructor(config: ResolvedPoolOptions) {
    this.#config = config
  }

  get size(): number {
    return this.#entries.size
  }

  get reaperPid(): number | undefined {
    return this.#handle?.pid
  }

  /** Our copy of the entry of `name`, if we hold it (not a copy: do not change it). */
  get(name: string): LeaseEntry | undefined {
    return this.#entries.get(name)
  }

  entries(): Iterable<LeaseEntry> {
    return this.#entries.values()
  }

  /**
   * Ours now (reserved, created or adopted): remember this version of the entry, and tell the watchdog.
   * The marker write is not waited for: the lease table already names us as the owner (with our run id),
   * which is what the watchdog reaps by; the marker is the second source, for a lost lease file.
   */
  note(entry: LeaseEntry): void {
    this.#entries.set(entry.name, cloneEntry(entry))
    this.#stillMarked.delete(entry.name)
    this.#tellWatchdog()
  }

  /**
   * Call it under the lock, in the update where the entry stops being ours, so no later update puts it back.
   * `keepMarked`: the VM was handed back warm and stays parked with us, likely claimed again in a moment: its
   * name stays in the marker until `unmark`, so a warm cycle writes no marker. That is safe because the
   * watchdog skips marked VMs whose entry is idle or someone else's (lease-table.ts `selectReapTargets`).
   */
  forget(name: string, keepMarked = false): void {
    if (keepMarked) this.#stillMarked.add(name)
    if (this.#entries.delete(name)) this.#tellWatchdog()
  }

  /** A parked VM is no longer ours to come back to (its kept connection ended): out of the marker too. */
  unmark(name: string): void {
    if (this.#stillMarked.delete(name)) this.#tellWatchdog()
  }

  #tellWatchdog(): void {
    // Once per turn of the event loop, after the lease update that changed the list has let go of the lock
    // (`forget` runs inside it): changes in one turn make one write.
    if (this.#flush || !this.#handle) return
    this.#flush = setImmediate(() => {
      this.#flush = undefined
      const names = [...new Set([...this.#entries.keys(), ...this.#stillMarked])].sort()
      const joined = names.join('\n')
      if (joined === this.#written) return
      this.#written = joined
      void this.#handle?.setHeld(names).catch((error: unknown) => {
        this.#written = undefined
        debug('reaper marker write failed: %s', (error as Error).message)
      })
    })
  }

  ensureReaper(): Promise<ReaperHandle | undefined> {
    const reaper = this.#config.reaper
    if (!reaper) return Promise.resolve(undefined)
    this.#reaper ??= ReaperHandle.start({ runId: this.#config.runId, providerName: reaper.providerName, providerOptions: reaper.providerOptions, stateDir: this.#config.stateDir, env: reaper.env }).then((handle) => {
      this.#handle = handle
      this.#written = undefined
      return handle
    })
    const started = this.#reaper
    // A failed start is retried by the next acquire.
    started.catch(() => {
      if (this.#reaper === started) this.#reaper = undefined
    })
    return started
  }

  /** After drain: with a leak left the watchdog stays, and retries those deletes when this process exits. */
  async stopReaperIfEmpty(): Promise<void> {
    const reaper = await this.#reaper?.catch(() => undefined)
    if (reaper && this.#entries.size === 0) await reaper.stop()
  }
}
