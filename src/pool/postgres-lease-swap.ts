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
 */
import type pg from 'pg'
import type { LeaseSwapRequest } from './lease-store.js'
import type { ProcessIdentity } from '../util/process-info.js'

/** A claim is never written for an owner whose heartbeat other hosts may already judge stale. */
const CLAIM_SQL = `UPDATE vm_pool_leases l SET entry = jsonb_set($4::jsonb, '{token}', to_jsonb(nextval('vm_pool_tokens')))
  WHERE l.namespace = $1 AND l.name = $2 AND l.entry = $3::jsonb
    AND EXISTS (SELECT 1 FROM vm_pool_heartbeats h WHERE h.host = $5 AND h.pid = $6 AND h.start_time = $7
                AND h.beat_at > clock_timestamp() - make_interval(secs => h.ttl_ms / 2000.0))
  RETURNING l.entry->>'token' AS token`

/** `sweep_due`: 1 when no sweep was recorded for $5 ms (none asked: null); then swept_at is set now, so only this swap gets it. */
const SWAP_SQL = `WITH u AS (UPDATE vm_pool_leases l SET entry = $4::jsonb WHERE l.namespace = $1 AND l.name = $2 AND l.entry = $3::jsonb RETURNING 1),
  d AS (UPDATE vm_pool_tables SET swept_at = clock_timestamp() WHERE $5::float8 IS NOT NULL AND namespace = $1
          AND (swept_at IS NULL OR swept_at < clock_timestamp() - make_interval(secs => $5::float8 / 1000)) RETURNING 1)
  SELECT (SELECT count(*) FROM u)::int AS swapped, (SELECT count(*) FROM d)::int AS sweep_due`

/** The swap's answer: undefined when nothing was written; `token` for a claim; `sweepDue` when this swap got the sweep. */
export async function runSwap(client: pg.ClientBase, namespace: string, request: LeaseSwapRequest, me: ProcessIdentity): Promise<{ token?: number; sweepDue?: boolean } | undefined> {
  const common = [namespace, request.name, JSON.stringify(request.expected), JSON.stringify(request.next)]
  if (request.claim) {
    const { rows } = await client.query<{ token: string }>({ name: 'vm-pool-claim-v2', text: CLAIM_SQL, values: [...common, me.host, me.pid, me.startTime ?? -1] })
    return rows[0] && { token: Number(rows[0].token) }
  }
  const { rows } = await client.query<{ swapped: number; sweep_due: number }>({ name: 'vm-pool-swap-v2', text: SWAP_SQL, values: [...common, request.sweepEveryMs ?? null] })
  if (rows[0]?.swapped !== 1) return undefined
  return rows[0].sweep_due > 0 ? { sweepDue: true } : {}
}
