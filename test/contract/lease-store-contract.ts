/**
 * The contract every LeaseStore passes (src/pool/lease-store.ts). Each store's test file calls
 * `describeLeaseStoreContract` with a factory. In-process checks run on the store itself; the cross-process
 * checks spawn real processes (fixtures/pool/store-writer.mjs, lock-holder.mjs) that open the same store
 * from `childStore`, a plain-JSON description `openLeaseStore` in fixtures/pool/common.mjs understands.
 */
import { afterAll, afterEach, describe, expect, test } from 'vitest'
import type { LeaseEntry, LeaseStore } from '../../src/pool/lease-store.js'
import { killFixtures, spawnFixture } from '../../fixtures/pool/harness.js'

export interface MadeLeaseStore {
  store: LeaseStore
  /** Opens another instance on the same table (as a second process on the host would). */
  another(): LeaseStore
  /** How a fixture process opens the same table: `{ kind: 'file', stateDir, lock }`, ... */
  childStore: Record<string, unknown>
  dispose(): void | Promise<void>
}

export function makeEntry(name: string, overrides: Partial<LeaseEntry> = {}): LeaseEntry {
  const at = new Date().toISOString()
  return { name, provider: 'fake', specHash: 'abc', kind: 'slot', state: 'idle', owner: null, runId: 'r1', createdAt: at, updatedAt: at, ...overrides }
}

const pause = () => new Promise((resolve) => setImmediate(resolve))

export function describeLeaseStoreContract(label: string, make: () => MadeLeaseStore | Promise<MadeLeaseStore>): void {
  describe(`LeaseStore contract: ${label}`, () => {
    let made: MadeLeaseStore | undefined
    const open = async () => {
      made = await make()
      return made
    }
    afterEach(async () => {
      killFixtures()
      await made?.dispose()
      made = undefined
    })
    afterAll(killFixtures)

    test('an empty store reads as an empty table', async () => {
      const { store } = await open()
      expect(await store.read()).toEqual({})
    })

    test('update changes the table and returns the mutator result; read sees it', async () => {
      const { store } = await open()
      const result = await store.update((table) => {
        table.a = makeEntry('a')
        return 42
      })
      expect(result).toBe(42)
      expect(Object.keys(await store.read())).toEqual(['a'])
      await store.update((table) => {
        delete table.a
      })
      expect(await store.read()).toEqual({})
    })

    test('entries round-trip whole: owner, record, timestamps, optional fields', async () => {
      const { store, another } = await open()
      const full = makeEntry('full', {
        state: 'leased',
        owner: { pid: 12345, host: 'some-host', startTime: 987 },
        key: 'slot-1',
        record: { name: 'full', provider: 'fake', createdAt: '2025-01-01T00:00:00.000Z', spec: { name: 'full', cpus: 2 }, data: { home: '/x' } },
        idleSince: '2025-01-01T00:00:01.000Z',
        expiresAt: '2025-01-01T00:10:00.000Z',
        recoveredAt: '2025-01-01T00:00:02.000Z',
      })
      await store.update((table) => {
        table.full = structuredClone(full)
      })
      expect((await another().read()).full).toEqual(full)
    })

    test('read returns a snapshot: changing it changes nothing stored', async () => {
      const { store } = await open()
      await store.update((table) => {
        table.a = makeEntry('a')
      })
      const snapshot = await store.read()
      delete snapshot.a
      snapshot.b = makeEntry('b')
      expect(Object.keys(await store.read())).toEqual(['a'])
    })

    test('a throwing mutator (sync or async) changes nothing and rejects', async () => {
      const { store } = await open()
      await store.update((table) => {
        table.a = makeEntry('a')
      })
      await expect(
        store.update((table) => {
          table.b = makeEntry('b')
          throw new Error('boom')
        }),
      ).rejects.toThrow('boom')
      await expect(
        store.update(async (table) => {
          table.c = makeEntry('c')
          await pause()
          throw new Error('async boom')
        }),
      ).rejects.toThrow('async boom')
      expect(Object.keys(await store.read())).toEqual(['a'])
      // And the store still works after a failed update.
      await store.update((table) => {
        table.d = makeEntry('d')
      })
      expect(Object.keys(await store.read()).sort()).toEqual(['a', 'd'])
    })

    test('concurrent updates in one process are serialized: none is lost', async () => {
      const { store } = await open()
      await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          store.update(async (table) => {
            const before = Object.keys(table).length
            await pause()
            table[`n${i}`] = makeEntry(`n${i}`)
            return before
          }),
        ),
      )
      expect(Object.keys(await store.read())).toHaveLength(40)
    })

    test('two instances on the same table exclude each other: none is lost', async () => {
      const { store, another } = await open()
      const second = another()
      const bump = (target: LeaseStore, i: number) =>
        target.update(async (table) => {
          const counter = table.counter ?? makeEntry('counter', { runId: '0' })
          await pause()
          counter.runId = String(Number(counter.runId) + 1)
          table.counter = counter
          table[`m${i}`] = makeEntry(`m${i}`)
        })
      await Promise.all(Array.from({ length: 30 }, (_, i) => bump(i % 2 === 0 ? store : second, i)))
      const table = await store.read()
      expect(table.counter?.runId).toBe('30')
      expect(Object.keys(table)).toHaveLength(31)
    })

    test('4 processes × 25 updates each: none is lost', async () => {
      const { store, childStore } = await open()
      const writers = Array.from({ length: 4 }, (_, id) => spawnFixture('store-writer.mjs', { store: childStore, id, count: 25 }))
      await Promise.all(writers.map((writer) => writer.message((m) => m.done === true, 'done', 120_000)))
      expect(Object.keys(await store.read())).toHaveLength(100)
    }, 180_000)

    test('a process SIGKILLed inside update blocks nobody, and its change is not written', async () => {
      const { store, childStore } = await open()
      const holder = spawnFixture('lock-holder.mjs', { store: childStore })
      await holder.message((m) => m.locked === true, 'locked', 120_000)
      holder.child.kill('SIGKILL')
      await holder.exited
      await store.update((table) => {
        table.after = makeEntry('after')
      })
      expect(Object.keys(await store.read())).toEqual(['after'])
    }, 180_000)
  })
}
