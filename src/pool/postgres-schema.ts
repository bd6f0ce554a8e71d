import type pg from 'pg'
import { VmPoolError } from '../errors.js'

/**
 * The PostgreSQL lease store's schema, created and migrated by the store itself (postgres-lease-store.ts).
 * `MIGRATIONS[n - 1]` takes the schema from version n - 1 to n; the version lives in `vm_pool_schema`.
 * A database whose schema is newer than this code knows is refused: an older vm-pool must not write rows a
 * newer one reads differently.
 */
export const SCHEMA_VERSION = 2

const MIGRATIONS: readonly string[] = [
  `CREATE TABLE vm_pool_tables (
     namespace text PRIMARY KEY,
     -- Schema 1's fencing token counter; schema 2 takes tokens from vm_pool_tokens. The row lock (SELECT ... FOR
     -- UPDATE) still serializes the locked updates.
     next_token bigint NOT NULL DEFAULT 1
   );
   CREATE TABLE vm_pool_leases (
     namespace text NOT NULL REFERENCES vm_pool_tables (namespace),
     name text NOT NULL,
     entry jsonb NOT NULL,
     PRIMARY KEY (namespace, name)
   );
   -- One row per process that used the store; start_time -1 when the host has no /proc.
   CREATE TABLE vm_pool_heartbeats (
     host text NOT NULL,
     pid integer NOT NULL,
     start_time bigint NOT NULL,
     ttl_ms integer NOT NULL,
     beat_at timestamptz NOT NULL,
     PRIMARY KEY (host, pid, start_time)
   );`,
  // 2: fencing tokens from a sequence, so a claim by one-row swap (postgres-lease-swap.ts) takes no namespace
  // lock (next_token is no longer used). Each nextval reserves a block of 16: a locked update hands out up to
  // that many from one call. It starts above every token the counters gave. A locked update's write that finds
  // a row changed under it (by a swap) fails with serialization_failure, and the update is run again.
  // swept_at: when a pool's locked update last did the housekeeping sweep; the swaps share that duty through it.
  `ALTER TABLE vm_pool_tables ADD COLUMN swept_at timestamptz;
   CREATE SEQUENCE vm_pool_tokens INCREMENT BY 16 MINVALUE 1;
   SELECT setval('vm_pool_tokens', (SELECT greatest(max(next_token), 1) FROM vm_pool_tables));
   CREATE FUNCTION vm_pool_expect_rows(actual bigint, expected bigint) RETURNS void LANGUAGE plpgsql AS $$
   BEGIN
     IF actual <> expected THEN
       RAISE EXCEPTION 'vm-pool: % of % lease rows changed while the update ran', expected - actual, expected USING ERRCODE = 'serialization_failure';
     END IF;
   END $$;`,
]

/** Serializes schema changes between processes that open the store at the same time (any 64-bit constant of ours). */
const SCHEMA_LOCK_KEY = 0x766d_706f_6f6c // "vmpool"

/** Create or migrate the schema, or refuse a newer one. Fast path: one SELECT when it is current. */
export async function ensureSchema(client: pg.ClientBase, location: string): Promise<void> {
  try {
    const { rows } = await client.query<{ version: number }>('SELECT version FROM vm_pool_schema')
    if (rows[0]?.version === SCHEMA_VERSION) return
  } catch (error) {
    // 42P01: undefined_table (a new database). Anything else is a real problem.
    if ((error as { code?: string }).code !== '42P01') throw error
  }
  await client.query('BEGIN')
  try {
    await client.query('SELECT pg_advisory_xact_lock($1)', [SCHEMA_LOCK_KEY])
    await client.query('CREATE TABLE IF NOT EXISTS vm_pool_schema (id boolean PRIMARY KEY DEFAULT true CHECK (id), version integer NOT NULL)')
    const { rows } = await client.query<{ version: number }>('SELECT version FROM vm_pool_schema')
    const version = rows[0]?.version ?? 0
    if (version > SCHEMA_VERSION) {
      throw new VmPoolError({
        code: 'VMPOOL_LEASE_STORE',
        operation: 'schema',
        message: `the lease store at ${location} has schema version ${version}, newer than this vm-pool knows (${SCHEMA_VERSION}); refusing to use it`,
        hint: 'upgrade vm-pool on this machine to the version the other machines run, or point it at another database',
        details: { schemaVersion: version, supportedVersion: SCHEMA_VERSION },
      })
    }
    for (let next = version + 1; next <= SCHEMA_VERSION; next++) await client.query(MIGRATIONS[next - 1]!)
    await client.query('INSERT INTO vm_pool_schema (id, version) VALUES (true, $1) ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version', [SCHEMA_VERSION])
    await client.query('COMMIT')
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {})
    throw error
  }
}
