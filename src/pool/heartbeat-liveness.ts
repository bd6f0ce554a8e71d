import type { LeaseOwner, OwnerLiveness } from './owner-liveness.js'

/**
 * How often a process using a shared lease store (PostgreSQL) writes its heartbeat, and how old a heartbeat
 * may get before its owner counts as dead on other hosts. The TTL is a few intervals, so one slow beat (a busy
 * machine, a database restart) does not lose leases. Both scaled by `VM_POOL_TIMEOUT_SCALE`; each owner
 * writes its own TTL into its heartbeat, and the judges on other hosts use that one.
 */
export const HEARTBEAT_INTERVAL_MS = 5_000
/** 6 intervals: on a CPU-starved 2-core machine a 10 s TTL judged live processes dead (measured with 16 bench processes). */
export const HEARTBEAT_TTL_MS = 6 * HEARTBEAT_INTERVAL_MS

/** One heartbeat as loaded inside an update, its age measured on the database's clock. */
export interface HeartbeatRow {
  host: string
  pid: number
  /** -1 when the owner's start time is unknown (`null` in `LeaseOwner`). */
  startTime: number
  ttlMs: number
  ageMs: number
}

const keyOf = (host: string, pid: number, startTime: number | null) => `${host}\u0000${pid}\u0000${startTime ?? -1}`

/**
 * Owners on other hosts: alive while their heartbeat is at most their TTL old. No heartbeat: dead (every claim
 * writes one in the same transaction, so a live holder always has one).
 */
export function heartbeatLiveness(rows: readonly HeartbeatRow[]): OwnerLiveness {
  const beats = new Map(rows.map((row) => [keyOf(row.host, row.pid, row.startTime), row]))
  return {
    isAlive(owner: LeaseOwner) {
      const beat = beats.get(keyOf(owner.host, owner.pid, owner.startTime))
      return beat !== undefined && beat.ageMs <= beat.ttlMs
    },
  }
}
