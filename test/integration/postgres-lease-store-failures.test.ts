/**
 * The PostgreSQL lease store when things go wrong, on a real cluster (test/helpers/postgres.ts): PostgreSQL
 * restarts in the middle of a run (reconnect; no update lost or doubled), a wrong password and a missing
 * database (clear errors that never show the password), a schema from a newer vm-pool (refused), and the CLI
 * selecting the store with VM_POOL_LEASE_STORE, and rows changed behind the store's back (it skips re-validating unchanged rows).
 */
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TLSSocket } from 'node:tls'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { isVmPoolError, type VmPoolError } from '../../src/errors.js'
import type { LeaseEntry } from '../../src/pool/lease-store.js'
import { PostgresLeaseStore } from '../../src/pool/postgres-lease-store.js'
import { SCHEMA_VERSION } from '../../src/pool/postgres-schema.js'
import { BIN, makeStateDir } from '../../fixtures/pool/harness.js'
import { makeEntry } from '../contract/lease-store-contract.js'
import { getPostgresSkipReason, startPostgres, type StartedPostgres } from '../helpers/postgres.js'

const skipReason = getPostgresSkipReason()
const run = promisify(execFile)

async function failure(promise: Promise<unknown>): Promise<VmPoolError> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  )
  if (!isVmPoolError(error)) throw new Error(`expected a VmPoolError, got ${String(error)}`)
  return error
}

/** Everything a user could see of an error: message (with hint), JSON, cause, stack. */
const shown = (error: VmPoolError) => [error.message, JSON.stringify(error.toJSON()), String((error.cause as Error | undefined)?.message), error.stack ?? ''].join('\n')

describe.skipIf(skipReason !== undefined)(`PostgresLeaseStore failures${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let server: StartedPostgres
  beforeAll(async () => {
    server = await startPostgres()
  }, 120_000)
  afterAll(() => server?.stop())

  test('PostgreSQL restarting during a run: updates reconnect; none is lost or doubled', async () => {
    const store = new PostgresLeaseStore({ connectionString: await server.createDatabase('restart'), namespace: 'fake' })
    const succeeded: string[] = []
    const inDoubt: string[] = []
    const add = async (i: number) => {
      try {
        await store.update((table) => {
          const counter = table.counter ?? makeEntry('counter', { runId: '0' })
          counter.runId = String(Number(counter.runId) + 1)
          table.counter = counter
          table[`e${i}`] = makeEntry(`e${i}`)
        })
        succeeded.push(`e${i}`)
      } catch (error) {
        // Only a commit cut off half-way may fail (its outcome is unknown); it must say so.
        expect(isVmPoolError(error, 'VMPOOL_LEASE_STORE') && (error as VmPoolError).message).toContain('may or may not have happened')
        inDoubt.push(`e${i}`)
      }
    }
    try {
      for (let i = 0; i < 10; i++) await add(i)
      // Updates keep coming all through the restart (server down, then up) and a few after it.
      let restarted = false
      let total = 10
      const writing = (async () => {
        for (let after = 0; after < 10; total++) {
          await add(total)
          if (restarted) after++
        }
      })()
      await server.restart()
      restarted = true
      await writing
      const table = await store.read()
      const entries = Object.keys(table).filter((name) => name !== 'counter')
      // Every update is one transaction: the counter counts exactly the entries written, none twice.
      expect(Number(table.counter!.runId)).toBe(entries.length)
      for (const name of succeeded) expect(table[name]).toBeDefined()
      expect(entries.length).toBeGreaterThanOrEqual(succeeded.length)
      expect(entries.length).toBeLessThanOrEqual(succeeded.length + inDoubt.length)
      expect(succeeded.length).toBeGreaterThanOrEqual(total - 1)
    } finally {
      await store.close()
    }
  }, 180_000)

  test('a wrong password: a clear error that shows neither password', async () => {
    await server.createDatabase('wrongpw')
    const wrong = 'Wr0ng-Secret-Value'
    const store = new PostgresLeaseStore({ connectionString: server.url('wrongpw', wrong) })
    try {
      const error = await failure(store.update(() => undefined))
      expect(error.code).toBe('VMPOOL_LEASE_STORE')
      expect(error.message).toMatch(/password authentication failed/)
      expect(error.hint).toMatch(/password is wrong/)
      expect(error.message).toContain(`postgres://${server.user}:***@127.0.0.1:${server.port}/wrongpw`)
      for (const secret of [wrong, server.password]) expect(shown(error)).not.toContain(secret)
      expect(store.location).not.toContain(wrong)
    } finally {
      await store.close()
    }
  }, 60_000)

  test('a database that does not exist: a clear error naming it', async () => {
    const store = new PostgresLeaseStore({ connectionString: server.url('no_such_db') })
    try {
      const error = await failure(store.read())
      expect(error.code).toBe('VMPOOL_LEASE_STORE')
      expect(error.message).toMatch(/database "no_such_db" does not exist/)
      expect(error.hint).toMatch(/createdb/)
      expect(shown(error)).not.toContain(server.password)
    } finally {
      await store.close()
    }
  }, 60_000)

  test('the store creates its schema; a schema from a newer version is refused', async () => {
    const connectionString = await server.createDatabase('newer')
    const first = new PostgresLeaseStore({ connectionString })
    await first.update((table) => {
      table.a = makeEntry('a')
    })
    await first.close()
    expect((await server.sql('newer', 'SELECT version FROM vm_pool_schema')).rows).toEqual([{ version: SCHEMA_VERSION }])
    await server.sql('newer', `UPDATE vm_pool_schema SET version = ${SCHEMA_VERSION + 1}`)
    const later = new PostgresLeaseStore({ connectionString })
    try {
      const error = await failure(later.read())
      expect(error.code).toBe('VMPOOL_LEASE_STORE')
      expect(error.message).toMatch(new RegExp(`schema version ${SCHEMA_VERSION + 1}, newer than this vm-pool knows \\(${SCHEMA_VERSION}\\)`))
      // Refused means untouched.
      expect((await server.sql('newer', 'SELECT count(*)::int AS n FROM vm_pool_leases')).rows).toEqual([{ n: 1 }])
    } finally {
      await later.close()
    }
  }, 60_000)

  test('rows changed behind the store: read fresh, a row that stops parsing is left alone, a deleted namespace row comes back', async () => {
    // The store keeps each row's text from its last load and skips the schema check for a row whose text is
    // unchanged: a row changed by anyone else must still be seen as it is now.
    const connectionString = await server.createDatabase('behind')
    const warnings: string[] = []
    const store = new PostgresLeaseStore({ connectionString, warn: (message) => warnings.push(message) })
    try {
      await store.update((table) => {
        table.a = makeEntry('a')
        table.b = makeEntry('b')
      })
      await server.sql('behind', `UPDATE vm_pool_leases SET entry = jsonb_set(entry, '{runId}', '"changed-by-sql"') WHERE name = 'a'`)
      expect(await store.update((table) => table.a!.runId)).toBe('changed-by-sql')
      await server.sql('behind', `UPDATE vm_pool_leases SET entry = '{"not": "an entry"}' WHERE name = 'b'`)
      expect(await store.update((table) => Object.keys(table).sort())).toEqual(['a'])
      expect(warnings).toEqual([expect.stringMatching(/^lease b in .* does not parse; left alone$/)])
      // Left alone: not deleted by the update that could not read it.
      expect((await server.sql('behind', `SELECT entry FROM vm_pool_leases WHERE name = 'b'`)).rows).toEqual([{ entry: { not: 'an entry' } }])
      // An entry the mutator changes is written; one it leaves alone is not rewritten.
      const xmin = async (name: string) => (await server.sql('behind', `SELECT xmin::text AS x FROM vm_pool_leases WHERE name = '${name}'`)).rows[0].x as string
      const [aBefore, bBefore] = [await xmin('a'), await xmin('b')]
      await store.update((table) => {
        table.a!.runId = 'changed-by-store'
      })
      expect(await xmin('a')).not.toBe(aBefore)
      expect(await xmin('b')).toBe(bBefore)
      expect((await store.read()).a!.runId).toBe('changed-by-store')
      // The namespace row (the lock and the fencing counter) emptied by hand: the next update creates it again.
      await server.sql('behind', 'DELETE FROM vm_pool_leases; DELETE FROM vm_pool_tables')
      await store.update((table) => {
        table.c = makeEntry('c')
      })
      expect(Object.keys(await store.read())).toEqual(['c'])
    } finally {
      await store.close()
    }
  }, 60_000)

  test('the CLI uses VM_POOL_LEASE_STORE for ls and gc; a wrong password never reaches its output', async () => {
    const connectionString = await server.createDatabase('cli')
    const state = makeStateDir()
    const store = new PostgresLeaseStore({ connectionString, namespace: 'fake' })
    try {
      const owner = { pid: 4242, host: 'some-other-host', startTime: 1 }
      await store.update((table) => {
        table['vitest-worker-abcd1234-1'] = makeEntry('vitest-worker-abcd1234-1', { state: 'leased', owner } as Partial<LeaseEntry>)
      })
      const env = { ...process.env, VM_POOL_STATE_DIR: state.dir, VM_POOL_PROVIDER: 'fake', VM_POOL_LEASE_STORE: connectionString }
      const ls = await run(process.execPath, [BIN, 'ls', '--json'], { env })
      const rows = JSON.parse(ls.stdout) as { name: string; lease: string; owner: { host: string; alive: boolean } }[]
      // Its owner on another host never wrote a heartbeat: dead, judged by the store, not by a pid here.
      expect(rows).toEqual([expect.objectContaining({ name: 'vitest-worker-abcd1234-1', lease: 'leased', owner: expect.objectContaining({ host: 'some-other-host', alive: false }) })])
      const gc = await run(process.execPath, [BIN, 'gc', '--json'], { env })
      expect(gc.stdout).toContain('vitest-worker-abcd1234-1')
      expect(await store.read()).toEqual({})

      const wrong = 'An0ther-Wrong-Secret'
      const bad = await run(process.execPath, [BIN, 'ls', '--json'], { env: { ...env, VM_POOL_LEASE_STORE: server.url('cli', wrong) } }).then(
        () => undefined,
        (error: { stdout: string; stderr: string; code: number }) => error,
      )
      expect(bad?.code).not.toBe(0)
      expect(`${bad?.stdout}${bad?.stderr}`).toMatch(/password authentication failed/)
      for (const secret of [wrong, server.password]) expect(`${bad?.stdout}${bad?.stderr}`).not.toContain(secret)
    } finally {
      await store.close()
      state.dispose()
    }
  }, 120_000)

  test('TLS the server does not have: a configuration error with what to do, not retried as an outage', async () => {
    const store = new PostgresLeaseStore({ connectionString: `${server.url('postgres')}?sslmode=verify-full` })
    try {
      const error = await failure(store.read())
      expect(error.code).toBe('VMPOOL_LEASE_STORE')
      expect(error.message).toMatch(/The server does not support SSL connections/)
      expect(error.hint).toMatch(/does not accept TLS: drop sslmode/)
      expect(error.hint).not.toMatch(/not reachable/)
      expect(shown(error)).not.toContain(server.password)
    } finally {
      await store.close()
    }
  }, 60_000)

  test('a server certificate Node refuses (self-signed): a configuration error naming it, not retried as an outage', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vm-pool-pg-tls-'))
    // A TLS server on loopback that answers PostgreSQL's SSLRequest with 'S', then shows a self-signed certificate.
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=localhost', '-days', '1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')])
    const context = { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) }
    const sockets = new Set<Socket>()
    const tlsServer = createServer((socket) => {
      sockets.add(socket)
      socket.on('error', () => {})
      socket.once('data', () => {
        socket.write('S')
        new TLSSocket(socket, { isServer: true, ...context }).on('error', () => {})
      })
    })
    await new Promise<void>((resolve) => tlsServer.listen(0, '127.0.0.1', resolve))
    const { port } = tlsServer.address() as AddressInfo
    const store = new PostgresLeaseStore({ connectionString: `postgres://someone:S3cret-Tls@127.0.0.1:${port}/db?sslmode=verify-full` })
    try {
      const error = await failure(store.read())
      expect(error.code).toBe('VMPOOL_LEASE_STORE')
      expect(error.hint).toMatch(/TLS certificate was refused \((DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN)\): name its CA with sslrootcert/)
      expect(shown(error)).not.toContain('S3cret-Tls')
    } finally {
      await store.close()
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => tlsServer.close(resolve))
      rmSync(dir, { recursive: true, force: true })
    }
  }, 60_000)
})
