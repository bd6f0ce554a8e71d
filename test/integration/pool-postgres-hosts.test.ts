/**
 * Owners on other hosts through the PostgreSQL lease store: real processes with different VM_POOL_HOST_ID
 * ("hosts") on one real PostgreSQL cluster (test/helpers/postgres.ts), the fake provider's VMs in one state dir.
 * A SIGKILLed owner on host B is reclaimed by host A once its heartbeat is past its TTL; a SIGSTOPped one is
 * not reclaimed before, and after it was, resuming it gives the fencing error instead of the VM.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { PostgresLeaseStore } from '../../src/pool/postgres-lease-store.js'
import { killFixtures, makeStateDir, spawnFixture, waitFor } from '../../fixtures/pool/harness.js'
import { getPostgresSkipReason, startPostgres, type StartedPostgres } from '../helpers/postgres.js'

const skipReason = getPostgresSkipReason()
/** Short heartbeats so the test waits seconds, not the default TTL. */
const INTERVAL_MS = 300
const TTL_MS = 4_000

describe.skipIf(skipReason !== undefined)(`owners on other hosts (PostgreSQL)${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let server: StartedPostgres
  let databases = 0
  const state = makeStateDir()
  beforeAll(async () => {
    server = await startPostgres()
  }, 120_000)
  afterEach(killFixtures)
  afterAll(() => {
    server?.stop()
    state.dispose()
  })

  async function setup() {
    const connectionString = await server.createDatabase(`hosts_${++databases}`)
    const leaseStore = { kind: 'postgres', connectionString, namespace: 'fake', heartbeatIntervalMs: INTERVAL_MS, heartbeatTtlMs: TTL_MS }
    const store = new PostgresLeaseStore({ connectionString, namespace: 'fake' })
    const provider = fakeProvider({ stateDir: state.dir })
    const onHost = (host: string, keys: string[]) =>
      spawnFixture('holder.mjs', { stateDir: state.dir, keys, reaper: false, leaseStore, prefix: `pg${databases}` }, { env: { VM_POOL_HOST_ID: host } })
    /** Host A, started before B is stopped: each `release` of one of its keys is one pool operation (its update sweeps orphans). */
    const startHostA = async () => {
      const a = onHost('host-a', ['a1', 'a2'])
      await a.message((m) => m.ready === true, 'ready', 60_000)
      return async (key: string) => {
        a.send({ cmd: 'release', key })
        await a.message((m) => m.released === key, `release ${key}`)
      }
    }
    return { store, provider, onHost, startHostA }
  }

  test('a SIGKILLed owner on host B: reclaimed by host A after its heartbeat TTL, not before', async () => {
    const { store, provider, onHost, startHostA } = await setup()
    try {
      const b = onHost('host-b', ['k1'])
      const ready = await b.message((m) => m.ready === true, 'ready', 60_000)
      const name = (ready.leases as Record<string, string>).k1!
      const poolOperationOnA = await startHostA()
      b.child.kill('SIGKILL')
      await b.exited
      const killedAt = performance.now()
      // Right away: B's heartbeat is fresh, and pid checks mean nothing across hosts. Host A keeps its hands off.
      await poolOperationOnA('a1')
      expect(performance.now() - killedAt).toBeLessThan(TTL_MS) // otherwise this step proved nothing
      expect((await store.read())[name]?.state).toBe('leased')
      expect((await provider.list()).map((vm) => vm.name)).toContain(name)
      // Past the TTL, one pool operation on host A reclaims it.
      await new Promise((resolve) => setTimeout(resolve, TTL_MS + INTERVAL_MS))
      await poolOperationOnA('a2')
      await waitFor(async () => !(name in (await store.read())) && !(await provider.list()).some((vm) => vm.name === name), `host A to delete ${name}`)
    } finally {
      await store.close()
    }
  }, 180_000)

  test('a SIGSTOPped owner on host B: kept until its TTL, then reclaimed; resumed, it gets the fencing error', async () => {
    const { store, provider, onHost, startHostA } = await setup()
    try {
      const b = onHost('host-b', ['k1'])
      const ready = await b.message((m) => m.ready === true, 'ready', 60_000)
      const name = (ready.leases as Record<string, string>).k1!
      const poolOperationOnA = await startHostA()
      b.send({ cmd: 'exec', key: 'k1', command: 'echo before' })
      expect((await b.message((m) => m.exec === 'echo before', 'exec')).stdout).toBe('before\n')
      b.child.kill('SIGSTOP')
      const stoppedAt = performance.now()
      await poolOperationOnA('a1')
      expect(performance.now() - stoppedAt).toBeLessThan(TTL_MS)
      expect((await store.read())[name]?.state).toBe('leased')
      await new Promise((resolve) => setTimeout(resolve, TTL_MS + INTERVAL_MS))
      await poolOperationOnA('a2')
      await waitFor(async () => !(name in (await store.read())) && !(await provider.list()).some((vm) => vm.name === name), `host A to reclaim ${name}`)
      b.child.kill('SIGCONT')
      b.send({ cmd: 'exec', key: 'k1', command: 'echo after' })
      const failure = await b.message((m) => typeof m.error === 'string', 'the fencing error', 30_000)
      expect(failure.code).toBe('VMPOOL_LEASE_LOST')
      expect(failure.error).toContain(name)
      expect(b.messages.some((m) => m.exec === 'echo after')).toBe(false)
    } finally {
      await store.close()
    }
  }, 180_000)
})
