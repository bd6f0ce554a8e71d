/**
 * The LeaseStore contract, run against FileLeaseStore, plus the file store's own promises:
 * mode 0600, a lock across real processes, a stale lock from a SIGKILLed process taken over,
 * a corrupt file moved aside and rebuilt from provider.list().
 */
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { FileLeaseStore, LEASE_LOCK_STALE_MS } from '../../src/pool/file-lease-store.js'
import type { LeaseEntry, LeaseStore } from '../../src/pool/lease-store.js'
import { ensureDistBuilt, killFixtures, makeStateDir, spawnFixture } from '../../fixtures/pool/harness.js'

function entry(name: string, overrides: Partial<LeaseEntry> = {}): LeaseEntry {
  const at = new Date().toISOString()
  return { name, provider: 'fake', specHash: 'abc', kind: 'slot', state: 'idle', owner: null, runId: 'r1', createdAt: at, updatedAt: at, ...overrides }
}

/** What every LeaseStore must do. */
function describeLeaseStoreContract(label: string, make: () => { store: LeaseStore; dispose(): void }) {
  describe(`LeaseStore contract: ${label}`, () => {
    let made: ReturnType<typeof make>
    afterEach(() => made.dispose())

    test('an empty store reads as an empty table', async () => {
      made = make()
      expect(await made.store.read()).toEqual({})
    })

    test('update changes the table and returns the mutator result; read sees it', async () => {
      made = make()
      const result = await made.store.update((table) => {
        table.a = entry('a')
        return 42
      })
      expect(result).toBe(42)
      expect(Object.keys(await made.store.read())).toEqual(['a'])
      await made.store.update((table) => {
        delete table.a
      })
      expect(await made.store.read()).toEqual({})
    })

    test('a throwing mutator changes nothing and rejects', async () => {
      made = make()
      await made.store.update((table) => {
        table.a = entry('a')
      })
      await expect(
        made.store.update((table) => {
          table.b = entry('b')
          throw new Error('boom')
        }),
      ).rejects.toThrow('boom')
      expect(Object.keys(await made.store.read())).toEqual(['a'])
    })

    test('concurrent updates in one process are serialized: none is lost', async () => {
      made = make()
      await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          made.store.update(async (table) => {
            const before = Object.keys(table).length
            await new Promise((resolve) => setImmediate(resolve))
            table[`n${i}`] = entry(`n${i}`)
            return before
          }),
        ),
      )
      expect(Object.keys(await made.store.read())).toHaveLength(40)
    })
  })
}

describeLeaseStoreContract('FileLeaseStore', () => {
  const state = makeStateDir()
  return { store: new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir }), dispose: state.dispose }
})

describe('FileLeaseStore', () => {
  let state: ReturnType<typeof makeStateDir>
  beforeAll(ensureDistBuilt, 120_000)
  afterEach(() => {
    killFixtures()
    state.dispose()
  })

  test('the file is <stateDir>/leases/<provider>.json, mode 0600, in a 0700 directory', async () => {
    state = makeStateDir()
    const store = new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir })
    await store.update((table) => {
      table.a = entry('a')
    })
    expect(store.path).toBe(join(state.dir, 'leases', 'fake.json'))
    expect(statSync(store.path).mode & 0o777).toBe(0o600)
    expect(statSync(join(state.dir, 'leases')).mode & 0o777).toBe(0o700)
    expect(JSON.parse(readFileSync(store.path, 'utf8'))).toMatchObject({ version: 1, provider: 'fake', leases: { a: { name: 'a' } } })
  })

  test('4 processes × 25 updates each: the lock loses none', async () => {
    state = makeStateDir()
    const writers = Array.from({ length: 4 }, (_, id) => spawnFixture('store-writer.mjs', { stateDir: state.dir, id, count: 25 }))
    await Promise.all(writers.map((writer) => writer.message((m) => m.done === true, 'done')))
    const table = await new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir }).read()
    expect(Object.keys(table)).toHaveLength(100)
  }, 60_000)

  test(`a lock left by a SIGKILLed process is taken over (stale after LEASE_LOCK_STALE_MS = ${LEASE_LOCK_STALE_MS} ms)`, async () => {
    state = makeStateDir()
    const holder = spawnFixture('lock-holder.mjs', { stateDir: state.dir })
    await holder.message((m) => m.locked === true, 'locked')
    holder.child.kill('SIGKILL')
    await holder.exited
    const store = new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir })
    expect(readdirSync(join(state.dir, 'leases'))).toContain('fake.json.lock')
    await store.update((table) => {
      table.after = entry('after')
    })
    expect(Object.keys(await store.read())).toEqual(['after'])
    expect(readdirSync(join(state.dir, 'leases'))).not.toContain('fake.json.lock')
  }, 60_000)

  for (const [label, garbage] of [
    ['not JSON', '{"version": 1, "leases": {'],
    ['JSON of the wrong shape', JSON.stringify({ version: 1, provider: 'fake', leases: { a: { name: 'a', state: 'exploded' } } })],
  ] as const) {
    test(`a corrupt file (${label}) is moved aside with a warning and rebuilt from provider.list()`, async () => {
      state = makeStateDir()
      const provider = fakeProvider({ stateDir: state.dir })
      await provider.create({ name: 'vitest-worker-x-1', cpus: 1 })
      await provider.create({ name: 'vitest-worker-x-2' })
      const warnings: string[] = []
      const store = new FileLeaseStore({ provider, stateDir: state.dir, warn: (message) => warnings.push(message) })
      await store.update(() => {})
      writeFileSync(store.path, garbage)

      const table = await store.read()
      expect(Object.keys(table).sort()).toEqual(['vitest-worker-x-1', 'vitest-worker-x-2'])
      // Owners are unknown: nobody may adopt these as idle, gc gives them a grace period.
      expect(table['vitest-worker-x-1']).toMatchObject({ state: 'leased', owner: null, recoveredAt: expect.any(String), record: { name: 'vitest-worker-x-1' } })
      expect(warnings).toHaveLength(1)
      expect(warnings[0]).toMatch(/was corrupt: moved it to .*fake\.json\.corrupt-.* and rebuilt 2 entries/)
      const aside = readdirSync(join(state.dir, 'leases')).filter((file) => file.startsWith('fake.json.corrupt-'))
      expect(aside).toHaveLength(1)
      expect(readFileSync(join(state.dir, 'leases', aside[0]!), 'utf8')).toBe(garbage)
      // And the rebuilt file is valid again: no second warning.
      await store.update(() => {})
      expect(warnings).toHaveLength(1)
    })
  }
})

afterAll(killFixtures)
