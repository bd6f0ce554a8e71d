/**
 * The wait queue of the lease lock (src/util/lock-queue.ts, Linux's abstract-socket lock): waiters are let in
 * in the order they asked, and the process serving the queue can be paused or SIGKILLed without two processes
 * ever being inside at once, without an update lost, and without the others waiting on it for long.
 * Real processes (fixtures/pool/lock-stress.mjs) on one lease file; see pool-lock-kill.test.ts for the holders.
 * Against a build without the queue (`VM_POOL_LOCK_TEST_DIST`), the order test fails: the waiters' retries
 * decide who is next.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import { killFixtures, makeStateDir, spawnFixture, waitFor, type FixtureProcess } from '../../fixtures/pool/harness.js'

const LOOPERS = 8
const WAITERS = 4
/** Long enough for a started waiter to have connected to the queue and asked before the next one starts. */
const SETTLE_MS = 1_000

const onLinux = process.platform === 'linux'
/** `VM_POOL_LOCK_TEST_DIST=/path/to/dist` runs the lock processes on another build (e.g. one without the queue, to see it fail). */
const DIST = process.env.VM_POOL_LOCK_TEST_DIST

describe.skipIf(!onLinux)('lease lock wait queue (abstract-socket; Linux only)', () => {
  const state = makeStateDir()
  afterEach(killFixtures)
  afterAll(() => state.dispose())

  const base = (name: string) => ({ stateDir: join(state.dir, name), lock: 'abstract-socket', insideFile: join(state.dir, `${name}-inside`), stopFile: join(state.dir, `${name}-stop`), ...(DIST ? { dist: DIST } : {}) })
  const counters = async (stateDir: string) => {
    const table = await new FileLeaseStore({ provider: fakeProvider({ stateDir }), stateDir }).read()
    return Object.values(table).reduce((sum, entry) => sum + (entry.name.startsWith('test-vm-stress-') ? Number(entry.runId) : 0), 0)
  }

  test(`${WAITERS} processes that wait for a held lock get it in the order they asked`, async () => {
    const config = base('order')
    const holder = spawnFixture('lock-holder.mjs', { store: { kind: 'file', stateDir: config.stateDir } })
    await holder.message((m) => m.locked === true, 'holder locked')
    const waiters: FixtureProcess[] = []
    for (let id = 0; id < WAITERS; id++) {
      const waiter = spawnFixture('lock-stress.mjs', { ...config, role: 'waiter', id, holdMs: 100 })
      await waiter.message((m) => m.asking === true, `waiter ${id} asking`)
      await new Promise((resolve) => setTimeout(resolve, SETTLE_MS))
      waiters.push(waiter)
    }
    const order: number[] = []
    for (const waiter of waiters) void waiter.message((m) => m.inside === true, 'inside').then((m) => order.push(m.id as number))
    holder.child.kill('SIGKILL')
    await Promise.all(waiters.map((waiter) => waiter.message((m) => m.left === true, 'left')))
    expect(order).toEqual([0, 1, 2, 3])
  }, 120_000)

  test(`the process serving the queue is paused, resumed and SIGKILLed while ${LOOPERS} processes loop: never two inside, no update lost, nobody stuck`, async () => {
    const config = base('server')
    // The server-to-be waits first (a holder has the lock), so it starts the queue.
    const holder = spawnFixture('lock-holder.mjs', { store: { kind: 'file', stateDir: config.stateDir } })
    await holder.message((m) => m.locked === true, 'holder locked')
    const server = spawnFixture('lock-stress.mjs', { ...config, role: 'queue-server', id: 'server' })
    await server.message((m) => m.ready === true, 'server ready')
    await new Promise((resolve) => setTimeout(resolve, SETTLE_MS))
    holder.child.kill('SIGKILL')
    expect((await server.message((m) => 'served' in m, 'served')).served).toBe(true)

    const loopers = Array.from({ length: LOOPERS }, (_, id) => spawnFixture('lock-stress.mjs', { ...config, role: 'looper', id }))
    await Promise.all(loopers.map((looper) => looper.message((m) => m.ready === true, 'ready', 120_000)))
    const progress = async (what: string) => {
      const before = await counters(config.stateDir)
      await waitFor(async () => (await counters(config.stateDir)) >= before + 2 * LOOPERS, what, 60_000)
    }
    await progress('updates with the queue served')
    server.child.kill('SIGSTOP')
    // Paused: the waiters' turns never come from it; they take the lock by the bind after QUEUE_SAFETY_MS.
    await progress('updates while the queue server is paused')
    server.child.kill('SIGCONT')
    await progress('updates after it resumed')
    server.child.kill('SIGKILL')
    await server.exited
    // Gone: its clients reconnect, one of them serves the queue now.
    await progress('updates after the queue server was SIGKILLed')

    writeFileSync(config.stopFile, '')
    const finished = await Promise.all(loopers.map((looper) => looper.message((m) => m.finished === true, 'finished', 120_000)))
    const table = await new FileLeaseStore({ provider: fakeProvider({ stateDir: config.stateDir }), stateDir: config.stateDir }).read()
    expect(finished.map((result) => result.overlaps)).toEqual(finished.map(() => []))
    expect(finished.map((result, id) => (result.done as number) - Number(table[`test-vm-stress-${id}`]?.runId ?? 0))).toEqual(finished.map(() => 0))
    expect(finished.map((result) => result.errors)).toEqual(finished.map(() => 0))
  }, 300_000)
})
