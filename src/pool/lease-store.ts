import { z } from 'zod'
import type { LeaseOwner, OwnerLiveness } from './owner-liveness.js'
import type { VmRecord } from '../providers/vm-provider.js'

/**
 * booting: the name is reserved and `provider.create` runs (the VM may not exist yet);
 * leased: a live process holds it; idle: a warm VM nobody holds, adoptable;
 * deleting: someone is deleting it — nobody else touches it.
 */
export type LeaseState = 'booting' | 'leased' | 'idle' | 'deleting'

/** `slot`: `acquire(key)`; `fresh`: `fresh()`, always deleted; `warm`: booted by `vm-pool warm`. */
export type LeaseKind = 'slot' | 'fresh' | 'warm'

export interface LeaseEntry {
  name: string
  provider: string
  /** See `getSpecHash`: VMs with equal hashes are interchangeable. */
  specHash: string
  kind: LeaseKind
  state: LeaseState
  /**
   * Who holds it (leased, booting, deleting). `null` for idle VMs, and for entries rebuilt from
   * `provider.list()` after the lease file was found corrupt (owner unknown, see `recoveredAt`).
   */
  owner: LeaseOwner | null
  /** The run that holds it, or last held it when idle. */
  runId: string
  /** The lease key while leased by `acquire(key)`. */
  key?: string
  /** Needed to connect from another process; absent while booting or when rebuilt without one. */
  record?: VmRecord
  /** ISO timestamps. */
  createdAt: string
  updatedAt: string
  idleSince?: string
  /** An idle VM past this time is deleted by the next pool operation or `vm-pool gc`. */
  expiresAt?: string
  /** Set when the entry was rebuilt after a corrupt lease file (the owner was lost). */
  recoveredAt?: string
  /**
   * Fencing token: set on every claim (reserve, adopt) by stores that issue them (`LeaseUpdateContext.nextToken`),
   * larger than any token a claim of this VM carried before. A holder whose copy carries another token lost the VM.
   */
  token?: number
}

/** A copy of an entry (plain JSON by design): cheaper than `structuredClone` on the warm cycle's path. */
export function cloneEntry(entry: LeaseEntry): LeaseEntry {
  return JSON.parse(JSON.stringify(entry)) as LeaseEntry
}

/** The lease table: VM name → entry. Mutated in place inside `LeaseStore.update`, by the functions of lease-table.ts. */
export type LeaseTable = Record<string, LeaseEntry>

/**
 * What a store tells the mutator of an update, read inside that update: the table's clock and how to judge
 * owners on other hosts. A store shared between hosts (PostgreSQL) gives its database's clock and a judge
 * built from the heartbeats it loaded in the same transaction; a store on one host gives `Date.now()` and
 * counts remote owners alive (it cannot tell).
 */
export interface LeaseUpdateContext {
  /** Unix ms on the table's clock: the database's for a shared store, never one host's against another's. */
  now: number
  /** Judges owners whose `host` is not this host's (owners on this host are judged by pid, at once). */
  remoteLiveness: OwnerLiveness
  /** A fencing token larger than any a claim loaded in this update carries; absent for stores without fencing. */
  nextToken?: () => number
  /** Stores with a swap: record that this update did the housekeeping sweep (`LeaseSwapRequest.sweepEveryMs`). */
  swept?: () => void
}

/**
 * The lease store role: a cross-process table of the VMs pools created, with short locked updates.
 * Every implementation passes the contract suite in test/contract/lease-store-contract.ts.
 */
export interface LeaseStore {
  /** For messages: where the table lives. */
  readonly location: string
  /** A consistent snapshot without taking the lock (readers never see a half-written table). */
  read(): Promise<LeaseTable>
  /**
   * Read-modify-write under the cross-process lock. `mutate` changes the table in place and
   * returns a result. Keep it short: never boot or delete a VM inside.
   */
  update<T>(mutate: (table: LeaseTable, context: LeaseUpdateContext) => T | Promise<T>): Promise<T>
  /**
   * Stores that write heartbeats: how long ago (this process's monotonic clock) the last one was confirmed,
   * whether one was missed by more than the TTL (the process was paused: its leases may be someone else's now),
   * and the TTL. The pool re-checks its fencing tokens before using a VM when either says so.
   */
  readonly heartbeat?: { readonly ttlMs: number; sinceConfirmedMs(): number; lapsed(): boolean }
  /**
   * Stores that can change one entry without the table's lock (PostgreSQL: one statement on one row). The
   * pool's warm cycle uses it for the VM it just held or handed back; see `LeaseSwap`.
   */
  readonly swap?: LeaseSwap
  /** Release connections and timers. Idempotent. */
  close?(): Promise<void>
}

/**
 * A compare-and-set of one entry, for the warm cycle (docs/pool.md, "The warm cycle"): `next` replaces the
 * stored entry only while it still equals `expected`, so a change by anyone else in between (an adoption, a
 * reclaim, a sweep) makes the swap fail and the caller take the locked `update`. No housekeeping runs.
 */
export interface LeaseSwap {
  /** Unix ms on the table's clock as this process estimates it (the last update's clock plus the time since), or undefined before the first update. */
  now(): number | undefined
  /**
   * `claim`: `next` gets a new fencing token (the store writes it in) and is written only while the owner's
   * heartbeat is fresh. `then` runs once the swap is in, before any other update of this process. Returns the entry as
   * written; `'declined'` when nothing was written (the stored entry was not `expected`, or the owner's heartbeat
   * was not fresh, or the store could not be reached); `'unknown'` when the connection broke during the
   * statement (it may or may not have happened: the locked update that follows sees which).
   */
  entry(request: LeaseSwapRequest, then?: (written: LeaseEntry) => void): Promise<{ written: LeaseEntry; sweepDue?: boolean } | 'declined' | 'unknown'>
}

export interface LeaseSwapRequest {
  name: string
  expected: LeaseEntry
  next: LeaseEntry
  claim?: boolean
  /**
   * The housekeeping sweep is due when no update recorded one (`LeaseUpdateContext.swept`) for this long: the
   * first swap to find it due gets `sweepDue` (and nobody else for another `sweepEveryMs`), so one process
   * sweeps for all of them.
   */
  sweepEveryMs?: number
}

const identitySchema = z.object({ pid: z.number().int(), host: z.string(), startTime: z.number().nullable() })

export const leaseEntrySchema = z.object({
  name: z.string(),
  provider: z.string(),
  specHash: z.string(),
  kind: z.enum(['slot', 'fresh', 'warm']),
  state: z.enum(['booting', 'leased', 'idle', 'deleting']),
  owner: identitySchema.nullable(),
  runId: z.string(),
  key: z.string().optional(),
  // The provider owns the record's shape; we only need it to round-trip.
  record: z.custom<VmRecord>((value) => typeof value === 'object' && value !== null && typeof (value as VmRecord).name === 'string').optional(),
  createdAt: z.string(),
  updatedAt: z.string(),
  idleSince: z.string().optional(),
  expiresAt: z.string().optional(),
  recoveredAt: z.string().optional(),
  token: z.number().int().optional(),
})

export const LEASE_FILE_VERSION = 1

export const leaseFileSchema = z.object({
  version: z.literal(LEASE_FILE_VERSION),
  provider: z.string(),
  leases: z.record(z.string(), leaseEntrySchema),
})

export type LeaseFile = z.infer<typeof leaseFileSchema>
