import type { VmProvider } from '../providers/vm-provider.js'
import { withTimeout } from '../util/timeouts.js'
import type { LeaseTable } from './lease-store.js'
import { dropIfStillOurs, type LeaseActor } from './lease-table.js'

export interface AnnouncedDeleteOptions {
  /** A locked read-modify-write of the lease table (`LeaseStore.update`, or the pool's with its housekeeping). */
  update<T>(mutate: (table: LeaseTable, now: number) => T): Promise<T>
  provider: Pick<VmProvider, 'name' | 'delete'>
  /** Whoever announces: the owner written into `deleting` entries, and the only one who may drop them. */
  actor: LeaseActor
  /** A named, already scaled timeout around each delete; without one the provider's own timeouts apply. */
  timeout?: { name: string; ms: number }
  /** Called under the lock for each entry dropped in step 3 (the pool stops re-registering it there). */
  onDropped?: (name: string) => void
}

export interface AnnouncedDeleteResult<T> {
  /** What `announce` returned beside the names (gc's decisions, for instance). */
  result: T
  deleted: string[]
  failed: { name: string; error: unknown }[]
}

/**
 * Delete what I announced — the one way the pool, `vm-pool gc` and the reaper delete a VM that has (or may
 * have) a lease:
 * 1. under the lock, `announce` marks the entries to delete `deleting` with `actor` as owner (lease-table.ts
 *    decides which) and returns their names: from then on nobody adopts, claims or deletes them;
 * 2. outside the lock, `provider.delete` each name, one at a time (a boot or a delete never runs under the lock);
 * 3. under the lock, drop each deleted name's entry if it is still `deleting` by `actor`.
 * A failed delete leaves its entry `deleting` with `actor` as owner: once `actor` is gone, the next pool
 * operation, gc or reaper on the host sees an orphan and retries.
 */
export async function deleteAnnounced<T>(options: AnnouncedDeleteOptions, announce: (table: LeaseTable, now: number) => { names: readonly string[]; result: T }): Promise<AnnouncedDeleteResult<T>> {
  const { names, result } = await options.update(announce)
  const deleted: string[] = []
  const failed: { name: string; error: unknown }[] = []
  for (const name of names) {
    try {
      const deleting = options.provider.delete(name)
      await (options.timeout ? withTimeout(deleting, { name: options.timeout.name, ms: options.timeout.ms, what: `${options.provider.name} to delete ${name}`, provider: options.provider.name, vm: name }) : deleting)
      deleted.push(name)
    } catch (error) {
      failed.push({ name, error })
    }
  }
  if (deleted.length > 0) {
    await options.update((table) => {
      for (const name of deleted) if (dropIfStillOurs(table, name, options.actor)) options.onDropped?.(name)
    })
  }
  return { result, deleted, failed }
}
