import { createDebug } from '../util/debug.js'
import type { LeaseEntry } from './lease-store.js'
import type { ResolvedPoolOptions } from './pool-options.js'
import { ReaperHandle } from './reaper.js'

const debug = createDebug('vm-pool:pool')

/**
 * How long a marker may still name a VM we stopped holding before it is rewritten without it. A pool that
 * releases a warm VM and takes it again at once (a loop of acquire+release) then writes no marker at all:
 * the write (temp file + rename, ~1 ms of CPU, more when many processes rename in one directory) was most
 * of a warm cycle's cost after the lease update itself. A name too many is safe: the watchdog reaps only
 * entries still ours and not idle (lease-table.ts `selectReapTargets`), and gc keeps what a live marker names.
 * A name too few is not, so new names are written in the same turn as before. Not scaled: not a timeout.
 */
export const MARKER_SHRINK_DELAY_MS = 500

/**
 * The VMs this process holds, as our own copy of each lease entry (put back by `restoreHeld` when the lease
 * file was lost, rebuilt or restored from an old copy), and the watchdog whose marker names them.
 * The watchdog starts before the first VM is reserved, so no window exists where a VM is ours and unwatched.
 */
export class HeldVms {
  readonly #config: ResolvedPoolOptions
  readonly #entries = new Map<string, LeaseEntry>()
  #reaper: Promise<ReaperHandle | undefined> | undefined
  #handle: ReaperHandle | undefined
  #flush: NodeJS.Immediate | undefined
  /** The names the marker has now (the last list handed to the watchdog), and the timer of a pending shrink. */
  #written = new Set<string>()
  #shrink: NodeJS.Timeout | undefined

  constructor(config: ResolvedPoolOptions) {
    this.#config = config
  }

  get size(): number {
    return this.#entries.size
  }

  get reaperPid(): number | undefined {
    return this.#handle?.pid
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
    this.#entries.set(entry.name, structuredClone(entry))
    this.#tellWatchdog()
  }

  /** Call it under the lock, in the update where the entry stops being ours, so no later update puts it back. */
  forget(name: string): void {
    if (this.#entries.delete(name)) this.#tellWatchdog()
  }

  #tellWatchdog(): void {
    // Once per turn of the event loop, after the lease update that changed the list has let go of the lock
    // (`forget` runs inside it): changes in one turn make one write.
    if (this.#flush || !this.#handle) return
    this.#flush = setImmediate(() => {
      this.#flush = undefined
      const names = [...this.#entries.keys()]
      const grew = names.some((name) => !this.#written.has(name))
      if (grew) return this.#writeMarker()
      if (names.length === this.#written.size) {
        // Back to what the marker says (a VM released and taken again): nothing to write.
        clearTimeout(this.#shrink)
        this.#shrink = undefined
        return
      }
      // Only fewer names: written a little later, unless they come back first (MARKER_SHRINK_DELAY_MS).
      if (this.#shrink) return
      this.#shrink = setTimeout(() => {
        this.#shrink = undefined
        if (this.#entries.size !== this.#written.size || [...this.#entries.keys()].some((name) => !this.#written.has(name))) this.#writeMarker()
      }, MARKER_SHRINK_DELAY_MS)
      this.#shrink.unref()
    })
  }

  #writeMarker(): void {
    clearTimeout(this.#shrink)
    this.#shrink = undefined
    const names = new Set(this.#entries.keys())
    void this.#handle
      ?.setHeld(names)
      .then(() => {
        this.#written = names
      })
      .catch((error: unknown) => debug('reaper marker write failed: %s', (error as Error).message))
  }

  ensureReaper(): Promise<ReaperHandle | undefined> {
    const reaper = this.#config.reaper
    if (!reaper) return Promise.resolve(undefined)
    this.#reaper ??= ReaperHandle.start({ runId: this.#config.runId, providerName: reaper.providerName, providerOptions: reaper.providerOptions, stateDir: this.#config.stateDir, env: reaper.env }).then((handle) => {
      this.#handle = handle
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
    // A shrink still pending is written now: a watchdog that stays should not chase VMs we gave back.
    if (this.#shrink) this.#writeMarker()
    if (reaper && this.#entries.size === 0) await reaper.stop()
  }
}
