/**
 * The lease table in PostgreSQL, shared by processes on many hosts (CI matrix jobs on different machines).
 * Why this file is long: one transaction protocol (lock, heartbeats, diff-write, retry rules) that only
 * makes sense read in one piece; the schema is in postgres-schema.ts, the judge in heartbeat-liveness.ts.
 *
 * Every update is one short transaction: the namespace's row in `vm_pool_tables` is locked with
 * SELECT ... FOR UPDATE (it also holds the fencing counter), the entries and the heartbeats are loaded in the
 * same transaction, the mutator runs with the database's clock, and only changed rows are written. A
 * transaction is retried only when it cannot have committed (the error came before COMMIT was sent): a
 * PostgreSQL restart neither loses nor doubles a lease. See docs/pool.md ("Stores", "Owners on other hosts").
 */
import type pg from 'pg'
import { VmPoolError, invalidOptions } from '../errors.js'
import { lazyModule } from '../util/lazy-module.js'
import { getCurrentProcessIdentity } from '../util/process-info.js'
import { getConnectionPassword, redactConnectionString, redactSecrets } from '../util/redact.js'
import { scaleTimeout, sleep } from '../util/timeouts.js'
import { HEARTBEAT_INTERVAL_MS, HEARTBEAT_TTL_MS, heartbeatLiveness, type HeartbeatRow } from './heartbeat-liveness.js'
import { leaseEntrySchema, type LeaseEntry, type LeaseStore, type LeaseSwap, type LeaseSwapRequest, type LeaseTable, type LeaseUpdateContext } from './lease-store.js'
import { runSwap } from './postgres-lease-swap.js'
import { ensureSchema } from './postgres-schema.js'

/** pg, loaded when a store is made (util/lazy-module.ts): file-store users never load it. */
const loadPg = lazyModule<typeof pg>('pg')

/** Connecting to PostgreSQL, per attempt. Scaled. */
export const POSTGRES_CONNECT_TIMEOUT_MS = 10_000
/** How long an update keeps retrying while the database is unreachable (a restart, a failover). Scaled. */
export const POSTGRES_RECONNECT_TIMEOUT_MS = 30_000
/** Waiting for another process's lease transaction (the row lock). Scaled. */
export const POSTGRES_LOCK_TIMEOUT_MS = 30_000
/** Pause between reconnect attempts. */
const RECONNECT_PAUSE_MS = 250

export interface PostgresLeaseStoreOptions {
  /** `postgres://user:password@host:port/database`. Never printed: messages show it with the password masked. */
  connectionString: string
  /** One lease table per namespace: give each provider its own (the pool uses the provider's name). @default 'default' */
  namespace?: string
  /** @default HEARTBEAT_INTERVAL_MS (scaled) */
  heartbeatIntervalMs?: number
  /** How old this process's heartbeat may get before other hosts judge it dead. @default HEARTBEAT_TTL_MS (scaled) */
  heartbeatTtlMs?: number
  /** Where warnings go (a row that does not parse). @default a line on stderr */
  warn?: (message: string) => void
}

/**
 * Whether pg parses `value` as a connection string: it does so only when it first connects, and its
 * "Invalid URL" then looks like an outage. A Client parses it when made; making one opens nothing.
 */
export function parsesAsConnectionString(value: string): boolean {
  try {
    new (loadPg().Client)({ connectionString: value })
    return true
  } catch {
    return false
  }
}

/** A locked update found a lease row changed under it by a swap (raised by `vm_pool_expect_rows`, before COMMIT). */
function isConflict(error: unknown): boolean {
  return (error as { code?: unknown }).code === '40001'
}

/** Fencing tokens one locked update may issue: the sequence's increment (postgres-schema.ts, version 2). */
const TOKENS_PER_UPDATE = 16

/** Errors from the database that mean "not reachable right now" (SQLSTATE classes 08 and 57P, or a socket error). */
function isTransient(error: unknown): boolean {
  const code = (error as { code?: unknown }).code
  if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return code.startsWith('08') || code.startsWith('57P')
  // TLS that cannot be set up is the connection string's or the server's configuration: waiting does not help.
  if (tlsSetupHint(error) !== undefined) return false
  // Socket errors (ECONNREFUSED, ECONNRESET, EPIPE, ENOENT on a unix socket) and pg's "Connection terminated".
  return true
}

/** pg's words (an Error without a code) when the connection string asks for TLS (sslmode, ssl=true) and the server has none. */
const PG_NO_SSL_MESSAGE = 'The server does not support SSL connections'

/**
 * What to do about a TLS set-up failure, or undefined for other errors: the server has no TLS, or Node refused
 * its certificate (DEPTH_ZERO_SELF_SIGNED_CERT, CERT_HAS_EXPIRED, ERR_TLS_CERT_ALTNAME_INVALID, ...). Both were
 * retried as an outage for POSTGRES_RECONNECT_TIMEOUT_MS and then blamed on the host and port.
 */
function tlsSetupHint(error: unknown): string | undefined {
  const code = (error as { code?: unknown }).code
  const message = error instanceof Error ? error.message : ''
  if (message.includes(PG_NO_SSL_MESSAGE)) return 'the server does not accept TLS: drop sslmode=... (or ssl=true) from the connection string, or turn ssl on in the server'
  if (typeof code === 'string' && /CERT|^ERR_TLS_|^ERR_SSL_|^UNABLE_TO_|^INVALID_CA$|^HOSTNAME_MISMATCH$/.test(code)) {
    return `the server's TLS certificate was refused (${code}): name its CA with sslrootcert=FILE in the connection string, or connect by the name the certificate is for`
  }
  return undefined
}

const HINTS: Record<string, string> = {
  '28P01': 'the user or password is wrong: check VM_POOL_LEASE_STORE (or the connectionString you passed)',
  '28000': 'PostgreSQL refused this user from this address: check pg_hba.conf',
  '3D000': 'the database does not exist: create it (`createdb <name>`) or fix the name in the connection string',
}

/** The heartbeats and the database's clock, read after the row lock is held (so `now` is not from before a lock wait). */
const HEARTBEATS_SQL = `WITH now AS (SELECT clock_timestamp() AS t)
  SELECT (extract(epoch FROM now.t) * 1000)::float8 AS now_ms, h.host, h.pid, h.start_time, h.ttl_ms,
         (extract(epoch FROM now.t - h.beat_at) * 1000)::float8 AS age_ms
  FROM now LEFT JOIN vm_pool_heartbeats h ON true`

/** The entries as jsonb's text: unchanged rows are recognised by their text and not parsed again (`#parseTable`). */
const LEASES_SQL = (ns: string) => `SELECT name, entry::text AS entry FROM vm_pool_leases WHERE namespace = ${ns}`

interface LeaseRow {
  name: string
  entry: string
}

interface HeartbeatQueryRow {
  now_ms: number | string
  host: string | null
  pid: number
  start_time: string
  ttl_ms: number
  age_ms: number | string
}

function parseHeartbeats(rows: readonly HeartbeatQueryRow[]): { now: number; rows: HeartbeatRow[] } {
  const beats = rows.filter((row) => row.host !== null).map((row) => ({ host: row.host!, pid: Number(row.pid), startTime: Number(row.start_time), ttlMs: Number(row.ttl_ms), ageMs: Number(row.age_ms) }))
  return { now: Math.round(Number(rows[0]!.now_ms)), rows: beats }
}

/** A PostgreSQL-backed `LeaseStore`: see the file comment, and docs/pool.md. */
export class PostgresLeaseStore implements LeaseStore {
  readonly location: string
  readonly namespace: string
  readonly heartbeat: { readonly ttlMs: number; sinceConfirmedMs(): number; lapsed(): boolean }
  readonly #secrets: (string | undefined)[]
  readonly #connectionString: string
  readonly #pool: pg.Pool
  readonly #intervalMs: number
  readonly #ttlMs: number
  readonly #warn: (message: string) => void
  #schema: Promise<void> | undefined
  /** Set once the namespace's row in vm_pool_tables is known to exist: updates then skip the INSERT. */
  #namespaceReady = false
  /**
   * The rows of the last load: name → jsonb text as PostgreSQL sent it, and the validated entry as canonical JSON.
   * A row whose text is unchanged is not validated again; the mutator gets a fresh copy (`JSON.parse`) either way.
   */
  #parsed = new Map<string, { text: string; canonical: string }>()
  #queue: Promise<unknown> = Promise.resolve()
  #timer: NodeJS.Timeout | undefined
  /** performance.now() of the last heartbeat the database confirmed (a beat, or an update that wrote one). */
  #confirmedAt = Number.NEGATIVE_INFINITY
  #lapses = 0
  #closed = false
  /** The database's clock minus ours, from the last update (`swap.now()`). */
  #clockOffset: number | undefined

  readonly swap: LeaseSwap = {
    now: () => (this.#clockOffset === undefined ? undefined : Date.now() + this.#clockOffset),
    // In this process's update queue: `then` runs before any later update loads the table.
    entry: (request, then) => {
      const run = this.#queue.then(() => this.#swap(request, then))
      this.#queue = run.catch(() => {})
      return run
    },
  }

  constructor(options: PostgresLeaseStoreOptions) {
    if (typeof options?.connectionString !== 'string' || !/^postgres(ql)?:\/\//.test(options.connectionString)) {
      const shown = typeof options?.connectionString === 'string' ? JSON.stringify(redactConnectionString(options.connectionString)) : String(options?.connectionString)
      throw invalidOptions(`postgresLeaseStore: connectionString must be a postgres:// or postgresql:// URL, got ${shown}`)
    }
    const namespace = options.namespace ?? 'default'
    if (typeof namespace !== 'string' || namespace.length === 0) throw invalidOptions('postgresLeaseStore: namespace must be a non-empty string')
    for (const [name, value] of [['heartbeatIntervalMs', options.heartbeatIntervalMs], ['heartbeatTtlMs', options.heartbeatTtlMs]] as const) {
      if (value !== undefined && (!Number.isInteger(value) || value <= 0)) throw invalidOptions(`postgresLeaseStore: ${name} must be a positive integer, got ${JSON.stringify(value)}`)
    }
    this.namespace = namespace
    this.location = `${redactConnectionString(options.connectionString)} (namespace ${namespace})`
    this.#secrets = [getConnectionPassword(options.connectionString)]
    this.#connectionString = options.connectionString
    this.#intervalMs = options.heartbeatIntervalMs ?? scaleTimeout(HEARTBEAT_INTERVAL_MS)
    this.#ttlMs = options.heartbeatTtlMs ?? scaleTimeout(HEARTBEAT_TTL_MS)
    this.#warn = options.warn ?? ((message) => process.stderr.write(`[vm-pool] warning: ${message}\n`))
    this.#pool = new (loadPg().Pool)({
      connectionString: options.connectionString,
      // One connection per process: updates and swaps run one at a time in the store's queue, and a heartbeat
      // or a read waits for the connection. (With more, a beat that came while a swap was in flight opened a
      // second one: a new backend to fork and authenticate, its statements prepared again, mid-run.)
      max: 1,
      idleTimeoutMillis: 10_000,
      allowExitOnIdle: true,
      connectionTimeoutMillis: scaleTimeout(POSTGRES_CONNECT_TIMEOUT_MS),
      // A startup parameter of every session: no `SET LOCAL` statement in each update's batch.
      lock_timeout: Math.round(scaleTimeout(POSTGRES_LOCK_TIMEOUT_MS)),
      application_name: 'vm-pool',
    })
    // An idle connection dropped by a restarting server: the next checkout reconnects.
    this.#pool.on('error', () => {})
    const ttlMs = this.#ttlMs
    this.heartbeat = {
      ttlMs,
      sinceConfirmedMs: () => performance.now() - this.#confirmedAt,
      lapsed: () => this.#lapses > 0,
    }
  }

  /**
   * The environment a child process (the pool's watchdog) needs to open this store: passed in its environment,
   * never argv, which every user on the host can read.
   */
  childEnv(): Record<string, string> {
    return { VM_POOL_LEASE_STORE: this.#connectionString }
  }

  /** How many times a heartbeat came later than the TTL (this process was paused or cut off): the pool re-checks its tokens after one. */
  get lapses(): number {
    return this.#lapses
  }

  async read(): Promise<LeaseTable> {
    return this.#withRetry('read', async (client) => this.#loadTable(client).then(({ table }) => table), () => true)
  }

  update<T>(mutate: (table: LeaseTable, context: LeaseUpdateContext) => T | Promise<T>): Promise<T> {
    const run = this.#queue.then(() => this.#update(mutate))
    this.#queue = run.catch(() => {})
    return run
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#timer)
    // Our heartbeat goes with us: other hosts may judge what we still hold (nothing, after drain) at once.
    const me = getCurrentProcessIdentity()
    await this.#pool.query('DELETE FROM vm_pool_heartbeats WHERE host = $1 AND pid = $2 AND start_time = $3', [me.host, me.pid, me.startTime ?? -1]).catch(() => {})
    await this.#pool.end().catch(() => {})
  }

  async #update<T>(mutate: (table: LeaseTable, context: LeaseUpdateContext) => T | Promise<T>): Promise<T> {
    this.#startHeartbeat()
    let mutatorError: { error: unknown } | undefined
    let committing = false
    const result = await this.#withRetry(
      'update',
      async (client) => {
        committing = false
        // Two round trips per update, so the row lock is held for one round trip plus the mutator: the first
        // batch takes the lock, loads everything and then a block of fencing tokens, the second writes and
        // commits (simple-protocol batches, values as escaped literals). The lease rows are not locked: swaps
        // of one row (postgres-lease-swap.ts) go on meanwhile, and every write here is conditional on the row
        // as loaded (`#writeSql`).
        const ns = client.escapeLiteral(this.namespace)
        const beatNow = this.#beatDue()
        const results = (await client.query(
          [
            'BEGIN',
            // The namespace row is created once per store; the session's lock_timeout bounds the wait (see the constructor).
            ...(this.#namespaceReady ? [] : [`INSERT INTO vm_pool_tables (namespace) VALUES (${ns}) ON CONFLICT (namespace) DO NOTHING`]),
            `SELECT true AS present FROM vm_pool_tables WHERE namespace = ${ns} FOR UPDATE`,
            // A claim written in this transaction must never be judged ownerless: our heartbeat goes in it when due.
            ...(beatNow ? [this.#beatSql(client)] : []),
            HEARTBEATS_SQL,
            LEASES_SQL(ns),
            // After the entries are loaded: any claim they show took its token before this, so a VM's tokens
            // grow with every claim (one in between that changes a row this update writes makes it run again).
            `SELECT nextval('vm_pool_tokens')::text AS first_token`,
          ].join(';\n'),
        )) as unknown as pg.QueryResult[]
        const lockIndex = this.#namespaceReady ? 1 : 2
        const [head, beats, leases, tokens] = [results[lockIndex]!, results[results.length - 3]!, results[results.length - 2]!, results[results.length - 1]!]
        if (head.rows.length === 0) {
          // The namespace row is gone (tables emptied by hand): create it again on the next attempt, which
          // this one cannot have committed anything for.
          this.#namespaceReady = false
          throw Object.assign(new Error(`the row of namespace ${this.namespace} in vm_pool_tables disappeared`), { code: 'ENAMESPACE' })
        }
        this.#namespaceReady = true
        const firstToken = Number((tokens.rows[0] as { first_token: string }).first_token)
        let nextToken = firstToken
        const { now, rows } = parseHeartbeats(beats.rows as HeartbeatQueryRow[])
        this.#clockOffset = now - Date.now()
        const { table, texts, raw } = this.#parseTable(leases.rows as LeaseRow[])
        const takeToken = () => {
          if (nextToken >= firstToken + TOKENS_PER_UPDATE) throw new Error(`an update may issue at most ${TOKENS_PER_UPDATE} fencing tokens`)
          return nextToken++
        }
        let swept = false
        const context: LeaseUpdateContext = { now, remoteLiveness: heartbeatLiveness(rows), nextToken: takeToken, swept: () => void (swept = true) }
        let value: T
        try {
          value = await mutate(table, context)
        } catch (error) {
          mutatorError = { error }
          throw error
        }
        const writes = this.#writeSql(client, table, texts, raw)
        if (swept) writes.push(`UPDATE vm_pool_tables SET swept_at = clock_timestamp() WHERE namespace = ${ns}`)
        committing = true
        await client.query([...writes, 'COMMIT'].join(';\n'))
        if (beatNow) this.#confirmBeat()
        return value
      },
      // Retried only when it cannot have committed, and never a mutator's own error. A row changed by a swap
      // under this update aborts it before its COMMIT (`vm_pool_expect_rows`): run again on the new rows.
      (error) => mutatorError === undefined && (!committing || isConflict(error)),
      (error) => (committing && isTransient(error) && !isConflict(error) ? 'the connection broke while committing: the update may or may not have happened; the next pool operation sees which' : undefined),
    ).catch((error: unknown) => {
      if (mutatorError) throw mutatorError.error
      throw error
    })
    return result
  }

  /** `swap.entry`: one round trip, never retried (a retry could apply it twice); see postgres-lease-swap.ts. */
  async #swap(request: LeaseSwapRequest, then?: (written: LeaseEntry) => void): ReturnType<LeaseSwap['entry']> {
    if (this.#closed || this.#clockOffset === undefined) return 'declined'
    let client: pg.PoolClient
    try {
      client = await this.#pool.connect()
    } catch {
      return 'declined'
    }
    if (client.listenerCount('error') === 0) client.on('error', () => {})
    try {
      // A busy process's heartbeat rides on its swaps (see postgres-lease-swap.ts).
      const beat = this.#beatDue()
      if (beat) this.#countLapse()
      const swapped = await runSwap(client, this.namespace, request, getCurrentProcessIdentity(), beat ? this.#ttlMs : undefined)
      // Before the connection goes back: a timer beat waiting for it then finds none due.
      if (swapped.beat) this.#confirmBeat()
      client.release()
      if (!swapped.swapped) return 'declined'
      const written: LeaseEntry = swapped.token === undefined ? request.next : { ...request.next, token: swapped.token }
      then?.(written)
      return { written, ...(swapped.sweepDue ? { sweepDue: true } : {}) }
    } catch (error) {
      client.release(true)
      if (isTransient(error)) return 'unknown'
      throw this.#error('swap', error)
    }
  }

  /** One checkout per attempt; transient errors retried until POSTGRES_RECONNECT_TIMEOUT_MS while `mayRetry()`. */
  async #withRetry<T>(operation: string, work: (client: pg.PoolClient) => Promise<T>, mayRetry: (error: unknown) => boolean, extra: (error: unknown) => string | undefined = () => undefined): Promise<T> {
    const deadline = performance.now() + scaleTimeout(POSTGRES_RECONNECT_TIMEOUT_MS)
    for (;;) {
      let client: pg.PoolClient | undefined
      try {
        client = await this.#pool.connect()
        // A connection cut while checked out (a restart) is also emitted as an event: the failing query reports it.
        if (client.listenerCount('error') === 0) client.on('error', () => {})
        this.#schema ??= ensureSchema(client, this.location).catch((error: unknown) => {
          this.#schema = undefined
          throw error
        })
        await this.#schema
        const value = await work(client)
        client.release()
        return value
      } catch (error) {
        if (client) {
          // A broken or mid-transaction connection never goes back to the pool.
          await client.query('ROLLBACK').catch(() => {})
          client.release(true)
        }
        if (error instanceof VmPoolError) throw error
        if (!mayRetry(error) || !(isTransient(error) || isConflict(error)) || performance.now() > deadline) throw this.#error(operation, error, extra(error))
        // A conflict is run again at once: the swap that caused it has committed.
        if (!isConflict(error)) await sleep(RECONNECT_PAUSE_MS)
      }
    }
  }

  async #loadTable(client: pg.PoolClient): Promise<{ table: LeaseTable; texts: Map<string, string>; raw: Map<string, string> }> {
    const { rows } = await client.query<LeaseRow>(LEASES_SQL(client.escapeLiteral(this.namespace)))
    return this.#parseTable(rows)
  }

  /**
   * The table for the mutator, and each entry's canonical JSON (what `#writeSql` compares against). Only rows
   * whose text changed since the last load go through the schema: at steady state one or two of them.
   */
  #parseTable(rows: readonly LeaseRow[]): { table: LeaseTable; texts: Map<string, string>; raw: Map<string, string> } {
    const table: LeaseTable = {}
    const texts = new Map<string, string>()
    // Every row as loaded, parsed or not: the writes are conditional on them (`#writeSql`).
    const raw = new Map(rows.map((row) => [row.name, row.entry]))
    const parsed = new Map<string, { text: string; canonical: string }>()
    for (const row of rows) {
      let known = this.#parsed.get(row.name)
      if (known?.text !== row.entry) {
        let json: unknown
        try {
          json = JSON.parse(row.entry)
        } catch {
          json = undefined
        }
        const result = leaseEntrySchema.safeParse(json)
        if (!result.success) {
          this.#warn(`lease ${row.name} in ${this.location} does not parse; left alone`)
          continue
        }
        known = { text: row.entry, canonical: JSON.stringify(result.data) }
      }
      parsed.set(row.name, known)
      table[row.name] = JSON.parse(known.canonical) as LeaseEntry
      texts.set(row.name, known.canonical)
    }
    this.#parsed = parsed
    return { table, texts, raw }
  }

  /**
   * Only what changed, each write conditional on the row as loaded (`raw`): changed rows are updated only
   * while they still hold that text, new ones inserted only while absent, removed ones deleted only while
   * unchanged. `vm_pool_expect_rows` aborts the transaction when a count falls short (a swap changed a row
   * meanwhile), and the update is run again. SQL with escaped literals.
   */
  #writeSql(client: pg.PoolClient, table: LeaseTable, before: Map<string, string>, raw: Map<string, string>): string[] {
    const changed: [string, string, string][] = []
    const added: [string, string][] = []
    for (const [name, entry] of Object.entries(table)) {
      // An entry the mutator left alone serializes to exactly its canonical text (it is a JSON.parse of it):
      // no schema check. Anything else is validated before it is written.
      const old = before.get(name)
      if (old !== undefined && JSON.stringify(entry) === old) continue
      const text = JSON.stringify(leaseEntrySchema.parse(entry))
      if (old === text) continue
      const loaded = raw.get(name)
      if (loaded === undefined) added.push([client.escapeLiteral(name), client.escapeLiteral(text)])
      else changed.push([client.escapeLiteral(name), client.escapeLiteral(loaded), client.escapeLiteral(text)])
    }
    const removed = [...before.keys()].filter((name) => !(name in table)).map((name) => [client.escapeLiteral(name), client.escapeLiteral(raw.get(name)!)] as const)
    const ns = client.escapeLiteral(this.namespace)
    const column = (rows: readonly (readonly string[])[], index: number) => `ARRAY[${rows.map((row) => row[index]).join(',')}]::text[]`
    const sql: string[] = []
    if (changed.length > 0) {
      sql.push(
        `WITH w AS (UPDATE vm_pool_leases l SET entry = v.e::jsonb FROM unnest(${column(changed, 0)}, ${column(changed, 1)}, ${column(changed, 2)}) AS v(n, o, e)
           WHERE l.namespace = ${ns} AND l.name = v.n AND l.entry = v.o::jsonb RETURNING 1) SELECT vm_pool_expect_rows(count(*), ${changed.length}) FROM w`,
      )
    }
    if (added.length > 0) {
      sql.push(
        `WITH w AS (INSERT INTO vm_pool_leases (namespace, name, entry) SELECT ${ns}, n, e::jsonb FROM unnest(${column(added, 0)}, ${column(added, 1)}) AS t(n, e)
           ON CONFLICT (namespace, name) DO NOTHING RETURNING 1) SELECT vm_pool_expect_rows(count(*), ${added.length}) FROM w`,
      )
    }
    if (removed.length > 0) {
      sql.push(
        `WITH w AS (DELETE FROM vm_pool_leases l USING unnest(${column(removed, 0)}, ${column(removed, 1)}) AS v(n, o)
           WHERE l.namespace = ${ns} AND l.name = v.n AND l.entry = v.o::jsonb RETURNING 1) SELECT vm_pool_expect_rows(count(*), ${removed.length}) FROM w`,
      )
    }
    return sql
  }

  #beatSql(client: pg.PoolClient): string {
    const me = getCurrentProcessIdentity()
    return `INSERT INTO vm_pool_heartbeats (host, pid, start_time, ttl_ms, beat_at) VALUES (${client.escapeLiteral(me.host)}, ${me.pid}, ${me.startTime ?? -1}, ${this.#ttlMs}, clock_timestamp())
       ON CONFLICT (host, pid, start_time) DO UPDATE SET beat_at = clock_timestamp(), ttl_ms = EXCLUDED.ttl_ms`
  }

  /**
   * The timer's beat. Due or not is decided once it has the connection: a swap or an update that held it
   * meanwhile may have carried one (each confirms its beat before it gives the connection back).
   */
  async #timerBeat(): Promise<void> {
    const client = await this.#pool.connect()
    if (client.listenerCount('error') === 0) client.on('error', () => {})
    try {
      if (this.#beatDue()) {
        const me = getCurrentProcessIdentity()
        await client.query(
          `INSERT INTO vm_pool_heartbeats (host, pid, start_time, ttl_ms, beat_at) VALUES ($1, $2, $3, $4, clock_timestamp())
           ON CONFLICT (host, pid, start_time) DO UPDATE SET beat_at = clock_timestamp(), ttl_ms = EXCLUDED.ttl_ms`,
          [me.host, me.pid, me.startTime ?? -1, this.#ttlMs],
        )
        this.#confirmBeat()
      }
      client.release()
    } catch (error) {
      client.release(true)
      throw error
    }
  }

  #confirmBeat(): void {
    this.#confirmedAt = performance.now()
  }

  /** A beat is due when none was confirmed for half an interval: updates and swaps then carry one. */
  #beatDue(): boolean {
    return performance.now() - this.#confirmedAt > this.#intervalMs / 2
  }

  /**
   * Later than the TTL since the last confirmed beat: we were paused (SIGSTOP, a frozen VM) or cut off, and
   * other hosts may have reclaimed what we hold. Counted before any beat confirms a new one, so none hides it.
   */
  #countLapse(): void {
    if (Number.isFinite(this.#confirmedAt) && performance.now() - this.#confirmedAt > this.#ttlMs) this.#lapses++
  }

  /** The timer: a beat every interval while the store is open, unless a swap or an update carried one; it never keeps the process alive. */
  #startHeartbeat(): void {
    if (this.#timer || this.#closed) return
    this.#timer = setInterval(() => {
      this.#countLapse()
      if (this.#beatDue()) this.#timerBeat().catch(() => {})
    }, this.#intervalMs)
    this.#timer.unref()
  }

  /** A VmPoolError whose message, hint and cause never contain the password (pg's messages included). */
  #error(operation: string, error: unknown, extra?: string): VmPoolError {
    const raw = error instanceof Error ? error.message : String(error)
    const code = (error as { code?: unknown }).code
    const message = redactSecrets(raw || String(code ?? 'unknown error'), this.#secrets)
    const cause = Object.assign(new Error(message), typeof code === 'string' ? { code } : {})
    return new VmPoolError({
      code: 'VMPOOL_LEASE_STORE',
      operation,
      message: `lease store ${this.location}: ${operation} failed: ${message}${extra ? ` (${extra})` : ''}`,
      hint: (typeof code === 'string' && HINTS[code]) || tlsSetupHint(error) || (isTransient(error) ? `PostgreSQL was not reachable for ${scaleTimeout(POSTGRES_RECONNECT_TIMEOUT_MS)} ms (POSTGRES_RECONNECT_TIMEOUT_MS): is it running, and is the host and port right?` : undefined),
      details: { ...(typeof code === 'string' ? { pgCode: code } : {}) },
      cause,
    })
  }
}

/** The PostgreSQL lease store (see `PostgresLeaseStore`): pass it to `createPool({ leaseStore })`. */
export function postgresLeaseStore(options: PostgresLeaseStoreOptions): PostgresLeaseStore {
  return new PostgresLeaseStore(options)
}
