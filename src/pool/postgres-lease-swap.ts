/**
 * The SQL of `PostgresLeaseStore.swap` (lease-store.ts `LeaseSwap`): one entry changed by one statement on
 * its row, without the namespace's lock, for the warm cycle (docs/pool.md, "The warm cycle").
 *
 * Why it cannot race the locked updates: those do not lock the lease rows, but each of their writes is
 * conditional on the row as they loaded it (postgres-lease-store.ts `#writeSql`): a row a swap changed in
 * between makes that update abort and run again; a swap after such a write finds the row changed and is
 * declined. Both sides compare whole entries, so each row changes as a compare-and-set.
 *
 * Both are named (prepared) statements: parsed and planned once per connection, which is most of their cost
 * in the server (measured on these machines: a claim cost ~0.77 ms of the server's CPU as plain query text,
 * ~0.15 ms prepared).
 *
 * Each also carries this process's heartbeat when one is due (`beatTtlMs` given): a busy process's beats ride
 * on its swaps instead of taking a round trip of their own in the middle of its warm cycle. The claim's check
 * reads the heartbeat as it was before the statement, so a beat written here never lets its own claim through.
 */
import type pg from 'pg'
import type { LeaseSwapRequest } from './lease-store.js'
import type { ProcessIdentity } from '../util/process-info.js'

/** Our heartbeat, written only when the TTL parameter is not null; `beat` counts it. Parameters: host, pid, start time, TTL. */
const BEAT_CTE = (host: string, pid: string, start: string, ttl: string) => `hb AS (INSERT INTO vm_pool_heartbeats (host, pid, start_time, ttl_ms, beat_at)
      SELECT ${host}::text, ${pid}::int, ${start}::bigint, ${ttl}::int, clock_timestamp() WHERE ${ttl}::int IS NOT NULL
      ON CONFLICT (host, pid, start_time) DO UPDATE SET beat_at = clock_timestamp(), ttl_ms = EXCLUDED.ttl_ms RETURNING 1)`

/** A claim is never written for an owner whose heartbeat other hosts may already judge stale. */
const CLAIM_SQL = `WITH ${BEAT_CTE('$5', '$6', '$7', '$8')},
  u AS (UPDATE vm_pool_leases l SET entry = jsonb_set($4::jsonb, '{token}', to_jsonb(nextval('vm_pool_tokens')))
    WHERE l.namespace = $1 AND l.name = $2 AND l.entry = $3::jsonb
      AND EXISTS (SELECT 1 FROM vm_pool_heartbeats h WHERE h.host = $5::text AND h.pid = $6::int AND h.start_time = $7::bigint
                  AND h.beat_at > clock_timestamp() - make_interval(secs => h.ttl_ms / 2000.0))
    RETURNING l.entry->>'token' AS token)
  SELECT (SELECT token FROM u) AS token, (SELECT count(*) FROM hb)::int AS beat`

/**
 * `sweep_due`: 1 when no sweep was recorded for $5 ms (none asked: null) and this swap wrote its row; then swept_at
 * is set now, so only this swap gets it. A declined swap leaves the duty: its caller takes the locked path, which
 * does not run the sweep.
 */
const SWAP_SQL = `WITH ${BEAT_CTE('$6', '$7', '$8', '$9')},
  u AS (UPDATE vm_pool_leases l SET entry = $4::jsonb WHERE l.namespace = $1 AND l.name = $2 AND l.entry = $3::jsonb RETURNING 1),
  d AS (UPDATE vm_pool_tables SET swept_at = clock_timestamp() WHERE $5::float8 IS NOT NULL AND namespace = $1 AND EXISTS (SELECT 1 FROM u)
          AND (swept_at IS NULL OR swept_at < clock_timestamp() - make_interval(secs => $5::float8 / 1000)) RETURNING 1)
  SELECT (SELECT count(*) FROM u)::int AS swapped, (SELECT count(*) FROM d)::int AS sweep_due, (SELECT count(*) FROM hb)::int AS beat`

export interface SwapAnswer {
  /** Whether the entry was written (it still equalled `request.expected`). */
  swapped: boolean
  /** A claim's fencing token. */
  token?: number
  /** This swap got the housekeeping sweep. */
  sweepDue?: boolean
  /** Our heartbeat was written with it (asked with `beatTtlMs`), whether or not the entry was. */
  beat: boolean
}

/** One swap; `beatTtlMs`: also write our heartbeat with that TTL (one is due). */
export async function runSwap(client: pg.ClientBase, namespace: string, request: LeaseSwapRequest, me: ProcessIdentity, beatTtlMs?: number): Promise<SwapAnswer> {
  const common = [namespace, request.name, JSON.stringify(request.expected), JSON.stringify(request.next)]
  const beat = [me.host, me.pid, me.startTime ?? -1, beatTtlMs ?? null]
  if (request.claim) {
    const { rows } = await client.query<{ token: string | null; beat: number }>({ name: 'vm-pool-claim-v3', text: CLAIM_SQL, values: [...common, ...beat] })
    const token = rows[0]?.token
    return { swapped: token != null, ...(token != null ? { token: Number(token) } : {}), beat: rows[0]?.beat === 1 }
  }
  const { rows } = await client.query<{ swapped: number; sweep_due: number; beat: number }>({ name: 'vm-pool-swap-v3', text: SWAP_SQL, values: [...common, request.sweepEveryMs ?? null, ...beat] })
  return { swapped: rows[0]?.swapped === 1, ...(rows[0]?.sweep_due === 1 ? { sweepDue: true } : {}), beat: rows[0]?.beat === 1 }
}
