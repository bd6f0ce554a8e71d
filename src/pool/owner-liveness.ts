import { getHostName, isProcessAlive, type ProcessIdentity } from '../util/process-info.js'

/**
 * Who holds a lease. Today always a process on a host (pid + the kernel's start time of that pid, so a
 * reused pid is not the owner). Owners on other hosts (a heartbeat with a TTL) would add fields here and
 * a judge below; the lease table only ever asks the judge.
 */
export type LeaseOwner = ProcessIdentity

/**
 * Judges whether a lease owner still runs. The lease table calls it under the lock, so it is synchronous
 * and cheap; `now` is the table's clock, for judges that go by a heartbeat and a TTL instead of a pid.
 */
export interface OwnerLiveness {
  isAlive(owner: LeaseOwner, now: number): boolean
}

/**
 * Processes on this host: alive while that pid runs with the same start time (a zombie is dead).
 * An owner on another host counts as alive: nothing here can tell (see docs/pool.md, "Owners").
 */
export const localProcessLiveness: OwnerLiveness = {
  isAlive: (owner) => isProcessAlive(owner),
}

/** True for an owner on another host: `localProcessLiveness` cannot judge it and calls it alive. */
export function isOnOtherHost(owner: LeaseOwner): boolean {
  return owner.host !== getHostName()
}

/**
 * `vm-pool gc --assume-dead-host NAME`: a person's word that every owner on host NAME is gone (an old CI
 * container that shared the state dir, this host before a rename). Until owners on other hosts send
 * heartbeats, nothing else can collect their leases. Other owners are judged by `inner`.
 */
export function assumeDeadHosts(inner: OwnerLiveness, hosts: readonly string[]): OwnerLiveness {
  if (hosts.length === 0) return inner
  const dead = new Set(hosts)
  return { isAlive: (owner, now) => !dead.has(owner.host) && inner.isAlive(owner, now) }
}

/** For stores on one host: an owner elsewhere cannot be judged, so it counts as alive. */
export const remoteOwnersAlive: OwnerLiveness = { isAlive: () => true }

/**
 * Owners on this host (`VM_POOL_HOST_ID`, else the host name) by `local` (pid + start time: at once);
 * owners on other hosts by `remote` (a store's heartbeats and TTL, on the store's clock).
 */
export function hostAwareLiveness(local: OwnerLiveness, remote: OwnerLiveness): OwnerLiveness {
  const here = getHostName()
  return { isAlive: (owner, now) => (owner.host === here ? local.isAlive(owner, now) : remote.isAlive(owner, now)) }
}

export function isSameOwner(a: LeaseOwner | null, b: LeaseOwner | null): boolean {
  return a !== null && b !== null && a.pid === b.pid && a.host === b.host && a.startTime === b.startTime
}

/** The judge's verdicts kept a while: `alive` for `aliveTtlMs`, `dead` for good (a dead owner never comes back). */
const MAX_REMEMBERED_OWNERS = 1_024

/**
 * A judge that remembers: the pool's housekeeping asks about every held lease on every lease update, under
 * the lock; this keeps that to one check per owner per `aliveTtlMs` (a death is then noticed that much later,
 * by housekeeping that was lazy anyway). Not for the watchdog or gc, which want the current answer.
 */
export function rememberingLiveness(inner: OwnerLiveness, aliveTtlMs: number): OwnerLiveness {
  const verdicts = new Map<string, { alive: boolean; at: number }>()
  return {
    isAlive(owner, now) {
      const key = `${owner.host}/${owner.pid}/${owner.startTime}`
      const known = verdicts.get(key)
      if (known && (!known.alive || now - known.at < aliveTtlMs)) return known.alive
      const alive = inner.isAlive(owner, now)
      if (verdicts.size >= MAX_REMEMBERED_OWNERS) verdicts.clear()
      verdicts.set(key, { alive, at: now })
      return alive
    },
  }
}
