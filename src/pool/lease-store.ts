import { z } from 'zod'
import type { LeaseOwner } from './owner-liveness.js'
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
}

/** The lease table: VM name → entry. Mutated in place inside `LeaseStore.update`, by the functions of lease-table.ts. */
export type LeaseTable = Record<string, LeaseEntry>

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
  update<T>(mutate: (table: LeaseTable) => T | Promise<T>): Promise<T>
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
})

export const LEASE_FILE_VERSION = 1

export const leaseFileSchema = z.object({
  version: z.literal(LEASE_FILE_VERSION),
  provider: z.string(),
  leases: z.record(z.string(), leaseEntrySchema),
})

export type LeaseFile = z.infer<typeof leaseFileSchema>
