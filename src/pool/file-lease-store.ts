import { existsSync, mkdirSync } from 'node:fs'
import { rename } from 'node:fs/promises'
import { join } from 'node:path'
import { VmPoolError, invalidOptions } from '../errors.js'
import type { VmProvider } from '../providers/vm-provider.js'
import { acquireExclusiveLock, LockTimeoutError, type ExclusiveLockKind, type HeldLock } from '../util/exclusive-lock.js'
import { InPlaceFile } from '../util/in-place-file.js'
import { getStateDir } from '../util/state-dir.js'
import { scaleTimeout } from '../util/timeouts.js'
import { getSpecHash } from './spec-hash.js'
import { decodeLeaseFile, encodeLeaseFile, serializeLeases } from './lease-file.js'
import type { LeaseEntry, LeaseStore, LeaseTable, LeaseUpdateContext } from './lease-store.js'
import { localProcessLiveness, remoteOwnersAlive } from './owner-liveness.js'
import { findLiveMarkerHolders } from './reaper-marker.js'

/**
 * @deprecated The lease lock has no stale period any more: the kernel frees it when its holder dies (see
 * docs/pool.md, "The lock"). Kept so code that imported it still compiles; nothing reads it.
 */
export const LEASE_LOCK_STALE_MS = 5_000
/** Give up waiting for the lock after this long (scaled by `VM_POOL_TIMEOUT_SCALE`). */
export const LEASE_LOCK_TIMEOUT_MS = 30_000

export interface FileLeaseStoreOptions {
  /** Whose VMs: the file is `<stateDir>/leases/<provider.name>.json`; `list()` rebuilds a corrupt file. */
  provider: Pick<VmProvider, 'name' | 'list' | 'fingerprint'>
  /** @default `VM_POOL_STATE_DIR` or `~/.cache/vm-pool` */
  stateDir?: string
  /** Where warnings go (a corrupt file moved aside). @default a line on stderr */
  warn?: (message: string) => void
  /**
   * How processes exclude each other (util/exclusive-lock.ts): a unix socket in the abstract namespace
   * (Linux; the kernel frees it when the holder dies), or a `<file>.lock` symlink naming the holder.
   * @default 'abstract-socket' on Linux, else 'symlink'
   */
  lock?: ExclusiveLockKind
}

/**
 * The lease table as one JSON file per provider, mode 0600, read-modify-written under a cross-process lock held
 * only for that (util/exclusive-lock.ts). Written in place, with a checksum and a copy beside it
 * (`<file>.wal`, written first): see pool/lease-file.ts. A file that does not parse (and is not a torn write of
 * the copy's text) is moved aside and rebuilt from `provider.list()` plus the live owners' reaper markers.
 */
export class FileLeaseStore implements LeaseStore {
  readonly path: string
  /** The copy of the last table written, written before the file itself: what a torn file is restored from. */
  readonly walPath: string
  readonly location: string
  readonly #provider: Pick<VmProvider, 'name' | 'list' | 'fingerprint'>
  readonly #stateDir: string
  readonly #warn: (message: string) => void
  readonly #lockKind: ExclusiveLockKind | undefined
  #dirMade = false
  /** Kept open between updates (util/in-place-file.ts); closed by `close()`. */
  readonly #file: InPlaceFile
  readonly #copy: InPlaceFile
  /** Serializes this process's updates: cheaper than contending for the cross-process lock with ourselves. */
  #queue: Promise<unknown> = Promise.resolve()

  constructor(options: FileLeaseStoreOptions) {
    if (typeof options?.provider?.name !== 'string' || typeof options.provider.list !== 'function') {
      throw invalidOptions('FileLeaseStore needs a provider with a name and list()')
    }
    if (options.lock !== undefined && options.lock !== 'abstract-socket' && options.lock !== 'symlink') {
      throw invalidOptions(`FileLeaseStore: invalid lock ${JSON.stringify(options.lock)}: expected 'abstract-socket' or 'symlink'`)
    }
    this.#provider = options.provider
    this.#stateDir = getStateDir(options.stateDir)
    this.path = join(this.#stateDir, 'leases', `${options.provider.name}.json`)
    this.walPath = `${this.path}.wal`
    this.#file = new InPlaceFile(this.path, 0o600)
    this.#copy = new InPlaceFile(this.walPath, 0o600)
    this.location = this.path
    this.#warn = options.warn ?? ((message) => process.stderr.write(`[vm-pool] warning: ${message}\n`))
    this.#lockKind = options.lock
  }

  async read(): Promise<LeaseTable> {
    const text = this.#readSync(this.#file)
    if (text === undefined) return {}
    const decoded = decodeLeaseFile(text)
    // Torn (we may have caught a write half-way) or corrupt: read under the lock, which repairs it, so two
    // readers never both move a file aside.
    if (decoded.kind !== 'table') return this.update((table) => structuredClone(table))
    return decoded.table
  }

  update<T>(mutate: (table: LeaseTable, context: LeaseUpdateContext) => T | Promise<T>): Promise<T> {
    const run = this.#queue.then(() => this.#locked(mutate))
    this.#queue = run.catch(() => {})
    return run
  }

  /**
   * Inside the lock the file is read and written synchronously: a small file, and every await on I/O would
   * give the CPU away and, on a busy machine, get it back only after the waiters ran — measured as sections
   * several times longer under contention (docs/benchmarks.md). A sync `mutate` keeps the whole section
   * one burst.
   */
  async #locked<T>(mutate: (table: LeaseTable, context: LeaseUpdateContext) => T | Promise<T>): Promise<T> {
    const dir = join(this.path, '..')
    if (!this.#dirMade) {
      mkdirSync(dir, { recursive: true, mode: 0o700 })
      this.#dirMade = true
    }
    let lock: HeldLock
    try {
      lock = await this.#lock()
    } catch (error) {
      // The folder was removed under us (someone cleaned the state dir; the symlink lock lives in it): again.
      if (existsSync(dir)) throw error
      mkdirSync(dir, { recursive: true, mode: 0o700 })
      lock = await this.#lock()
    }
    try {
      const { table, leasesText } = await this.#readLocked()
      const before = leasesText ?? serializeLeases(table)
      // One host: this host's clock, and no way to judge owners elsewhere (no fencing tokens either).
      const result = await mutate(table, { now: Date.now(), remoteLiveness: remoteOwnersAlive })
      const after = serializeLeases(table)
      if (after !== before) this.#write(after)
      return result
    } finally {
      await lock.release()
    }
  }

  async #lock(): Promise<HeldLock> {
    const timeoutMs = scaleTimeout(LEASE_LOCK_TIMEOUT_MS)
    try {
      return await acquireExclusiveLock(this.path, { timeoutMs, ...(this.#lockKind ? { kind: this.#lockKind } : {}) })
    } catch (error) {
      if (error instanceof LockTimeoutError) {
        throw new VmPoolError({
          code: 'VMPOOL_LEASE_STORE',
          operation: 'lock',
          message: `timed out after ${timeoutMs} ms waiting for the lease lock of ${this.path} (LEASE_LOCK_TIMEOUT_MS): held by ${error.holder}`,
          hint: 'a live process keeps it (a dead one releases it at once); find it and see what it waits for. Set VM_POOL_TIMEOUT_SCALE on slow machines',
          details: { timeoutName: 'LEASE_LOCK_TIMEOUT_MS', timeoutMs },
          cause: error,
        })
      }
      throw new VmPoolError({ code: 'VMPOOL_LEASE_STORE', operation: 'lock', message: `could not lock ${this.path}: ${(error as Error).message}`, cause: error })
    }
  }

  /**
   * With the lock held: the table (and its text as the file holds it). A torn file whose checksum is the
   * copy's was cut off while writing the copy's text (its writer died mid-write): the copy is the table, and
   * goes back into the file at once.
   */
  async #readLocked(): Promise<{ table: LeaseTable; leasesText?: string }> {
    const text = this.#readSync(this.#file)
    if (text === undefined) return { table: {} }
    const decoded = decodeLeaseFile(text)
    if (decoded.kind === 'table') return decoded
    if (decoded.kind === 'torn') {
      const copy = this.#readSync(this.#copy)
      const restored = copy === undefined ? undefined : decodeLeaseFile(copy)
      if (restored?.kind === 'table' && restored.checksum === decoded.checksum) {
        this.#warn(`the lease file ${this.path} was torn (its last write was cut off, e.g. its writer was killed mid-write); restored it from ${this.walPath}`)
        this.#file.write(copy!)
        return restored
      }
    }
    return { table: await this.#recover() }
  }

  /** The file's text; `undefined` when there is none yet. */
  #readSync(file: InPlaceFile): string | undefined {
    try {
      return file.read()
    } catch (error) {
      throw new VmPoolError({ code: 'VMPOOL_LEASE_STORE', operation: 'read', message: `could not read ${file.path}: ${(error as Error).message}`, cause: error })
    }
  }

  /** The copy first, then the file: at any moment one of them is whole (lease-file.ts). */
  #write(leasesText: string): void {
    const text = encodeLeaseFile(this.#provider.name, leasesText)
    try {
      this.#copy.write(text)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error
      // The directory was removed under us (someone cleaned the state dir).
      mkdirSync(join(this.path, '..'), { recursive: true, mode: 0o700 })
      this.#copy.write(text)
    }
    this.#file.write(text)
  }

  /** Closes the files kept open between updates (they reopen if the store is used again). */
  async close(): Promise<void> {
    await this.#queue
    this.#file.close()
    this.#copy.close()
  }

  /**
   * Called with the lock held. Owners are lost with the file, except where a live owner's reaper marker names
   * the VM: that owner holds it (and re-registers its own copy on its next update).
   */
  async #recover(): Promise<LeaseTable> {
    const aside = `${this.path}.corrupt-${new Date().toISOString().replaceAll(/[:.]/g, '-')}`
    await rename(this.path, aside)
    const now = new Date().toISOString()
    const table: LeaseTable = {}
    const holders = await findLiveMarkerHolders(this.#stateDir, this.#provider.name, localProcessLiveness)
    for (const info of await this.#provider.list()) {
      const holder = holders.get(info.name)
      const entry: LeaseEntry = {
        name: info.name,
        provider: this.#provider.name,
        specHash: info.record ? getSpecHash(info.record.spec, this.#provider) : 'unknown',
        kind: 'slot',
        // Not idle: we cannot know whether someone holds it; its holder re-registers it on its next update.
        state: 'leased',
        owner: holder?.owner ?? null,
        runId: holder?.runId ?? 'unknown',
        createdAt: info.createdAt ?? now,
        updatedAt: now,
        recoveredAt: now,
      }
      if (info.record) entry.record = info.record
      table[info.name] = entry
    }
    const owned = Object.values(table).filter((entry) => entry.owner !== null).length
    this.#warn(`the lease file ${this.path} was corrupt: moved it to ${aside} and rebuilt ${Object.keys(table).length} entries from ${this.#provider.name}'s VM list (owners unknown${owned > 0 ? `, except ${owned} named by live owners' reaper markers` : ''})`)
    return table
  }
}
