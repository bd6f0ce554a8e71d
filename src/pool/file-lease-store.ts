import { mkdir, readFile, rename } from 'node:fs/promises'
import { join } from 'node:path'
import lockfile from 'proper-lockfile'
import { VmPoolError, invalidOptions } from '../errors.js'
import type { VmProvider } from '../providers/vm-provider.js'
import { writeFileAtomic } from '../util/fs-atomic.js'
import { createDebug } from '../util/debug.js'
import { getStateDir } from '../util/state-dir.js'
import { scaleTimeout, sleep } from '../util/timeouts.js'
import { getSpecHash } from './spec-hash.js'
import { LEASE_FILE_VERSION, leaseFileSchema, type LeaseEntry, type LeaseStore, type LeaseTable } from './lease-store.js'

/**
 * A lock whose directory mtime is older than this is taken over: its holder was SIGKILLed (a live holder
 * touches it every `LEASE_LOCK_UPDATE_MS`). proper-lockfile refuses less than 2 s.
 */
export const LEASE_LOCK_STALE_MS = 5_000
/** How often a holder refreshes its lock's mtime; sections are far shorter, so this rarely fires. */
export const LEASE_LOCK_UPDATE_MS = 1_000
/** Give up waiting for the lock after this long (scaled by `VM_POOL_TIMEOUT_SCALE`). */
export const LEASE_LOCK_TIMEOUT_MS = 30_000
/** Back-off between lock attempts: short and jittered, so 8 contending processes interleave. */
const LOCK_RETRY_MIN_MS = 2
const LOCK_RETRY_MAX_MS = 10

const debug = createDebug('vm-pool:lease-store')

export interface FileLeaseStoreOptions {
  /** Whose VMs: the file is `<stateDir>/leases/<provider.name>.json`; `list()` rebuilds a corrupt file. */
  provider: Pick<VmProvider, 'name' | 'list'>
  /** @default `VM_POOL_STATE_DIR` or `~/.cache/vm-pool` */
  stateDir?: string
  /** Where warnings go (a corrupt file moved aside). @default a line on stderr */
  warn?: (message: string) => void
}

/**
 * The lease table as one JSON file per provider, mode 0600, replaced atomically (temp file + rename) and
 * guarded by a proper-lockfile lock directory beside it, held only for one read-modify-write.
 * Like testcontainers-node's reuse lock, but cross-process, with stale-lock takeover and a table that
 * survives corruption: a file that does not parse is moved aside and rebuilt from `provider.list()`.
 */
export class FileLeaseStore implements LeaseStore {
  readonly path: string
  readonly location: string
  readonly #provider: Pick<VmProvider, 'name' | 'list'>
  readonly #warn: (message: string) => void
  /** Serializes this process's updates: proper-lockfile would refuse our own second lock anyway. */
  #queue: Promise<unknown> = Promise.resolve()

  constructor(options: FileLeaseStoreOptions) {
    if (typeof options?.provider?.name !== 'string' || typeof options.provider.list !== 'function') {
      throw invalidOptions('FileLeaseStore needs a provider with a name and list()')
    }
    this.#provider = options.provider
    this.path = join(getStateDir(options.stateDir), 'leases', `${options.provider.name}.json`)
    this.location = this.path
    this.#warn = options.warn ?? ((message) => process.stderr.write(`[vm-pool] warning: ${message}\n`))
  }

  async read(): Promise<LeaseTable> {
    const parsed = await this.#readFile()
    // A corrupt file is repaired under the lock, so two readers never both move it aside.
    if (parsed === 'corrupt') return this.update((table) => structuredClone(table))
    return parsed
  }

  update<T>(mutate: (table: LeaseTable) => T | Promise<T>): Promise<T> {
    const run = this.#queue.then(() => this.#locked(mutate))
    this.#queue = run.catch(() => {})
    return run
  }

  async #locked<T>(mutate: (table: LeaseTable) => T | Promise<T>): Promise<T> {
    await mkdir(join(this.path, '..'), { recursive: true, mode: 0o700 })
    let compromised: Error | undefined
    const release = await this.#lock((error) => {
      compromised = error
    })
    try {
      let table = await this.#readFile()
      if (table === 'corrupt') table = await this.#recover()
      const before = JSON.stringify(table)
      const result = await mutate(table)
      const after = JSON.stringify(table)
      if (after !== before) {
        if (compromised) {
          throw new VmPoolError({
            code: 'VMPOOL_LEASE_STORE',
            operation: 'update',
            message: `lost the lease lock on ${this.path} (${compromised.message}); the change was not written`,
            hint: 'the process was stalled longer than LEASE_LOCK_STALE_MS; retry',
            cause: compromised,
          })
        }
        const file = { version: LEASE_FILE_VERSION, provider: this.#provider.name, leases: table }
        await writeFileAtomic(this.path, `${JSON.stringify(file, null, 2)}\n`, 0o600)
      }
      return result
    } finally {
      await release().catch((error: unknown) => debug('releasing the lock failed: %s', (error as Error).message))
    }
  }

  async #lock(onCompromised: (error: Error) => void): Promise<() => Promise<void>> {
    const timeoutMs = scaleTimeout(LEASE_LOCK_TIMEOUT_MS)
    const deadline = Date.now() + timeoutMs
    for (;;) {
      try {
        return await lockfile.lock(this.path, {
          realpath: false,
          lockfilePath: `${this.path}.lock`,
          stale: LEASE_LOCK_STALE_MS,
          update: LEASE_LOCK_UPDATE_MS,
          retries: 0,
          onCompromised,
        })
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ELOCKED') {
          throw new VmPoolError({ code: 'VMPOOL_LEASE_STORE', operation: 'lock', message: `could not lock ${this.path}: ${(error as Error).message}`, cause: error })
        }
        if (Date.now() >= deadline) {
          throw new VmPoolError({
            code: 'VMPOOL_LEASE_STORE',
            operation: 'lock',
            message: `timed out after ${timeoutMs} ms waiting for the lease lock ${this.path}.lock (LEASE_LOCK_TIMEOUT_MS)`,
            hint: `a live process keeps it; a dead one's lock is taken over after ${LEASE_LOCK_STALE_MS} ms. Set VM_POOL_TIMEOUT_SCALE on slow machines`,
            details: { timeoutName: 'LEASE_LOCK_TIMEOUT_MS', timeoutMs },
            cause: error,
          })
        }
        await sleep(LOCK_RETRY_MIN_MS + Math.random() * (LOCK_RETRY_MAX_MS - LOCK_RETRY_MIN_MS))
      }
    }
  }

  async #readFile(): Promise<LeaseTable | 'corrupt'> {
    let text: string
    try {
      text = await readFile(this.path, 'utf8')
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return {}
      throw new VmPoolError({ code: 'VMPOOL_LEASE_STORE', operation: 'read', message: `could not read ${this.path}: ${(error as Error).message}`, cause: error })
    }
    try {
      const parsed = leaseFileSchema.safeParse(JSON.parse(text))
      return parsed.success ? parsed.data.leases : 'corrupt'
    } catch {
      return 'corrupt'
    }
  }

  /** Called with the lock held. */
  async #recover(): Promise<LeaseTable> {
    const aside = `${this.path}.corrupt-${new Date().toISOString().replaceAll(/[:.]/g, '-')}`
    await rename(this.path, aside)
    const now = new Date().toISOString()
    const table: LeaseTable = {}
    for (const info of await this.#provider.list()) {
      const entry: LeaseEntry = {
        name: info.name,
        provider: this.#provider.name,
        specHash: info.record ? getSpecHash(info.record.spec) : 'unknown',
        kind: 'slot',
        // Not idle: we cannot know whether someone holds it; its holder re-registers it on its next update.
        state: 'leased',
        owner: null,
        runId: 'unknown',
        createdAt: info.createdAt ?? now,
        updatedAt: now,
        recoveredAt: now,
      }
      if (info.record) entry.record = info.record
      table[info.name] = entry
    }
    this.#warn(`the lease file ${this.path} was corrupt: moved it to ${aside} and rebuilt ${Object.keys(table).length} entries from ${this.#provider.name}'s VM list (owners unknown)`)
    return table
  }
}
