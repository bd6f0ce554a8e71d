/**
 * FileLeaseStore's own promises beside the LeaseStore contract (test/contract/file-lease-store.test.ts):
 * mode 0600, what each lock leaves on disk when its holder is SIGKILLed, a torn write restored from the copy
 * beside the file, a corrupt file moved aside and rebuilt from provider.list() — with the VMs a live owner's
 * reaper marker names still held by that owner.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import { getProcessStartTime } from '../../src/util/process-info.js'
import { killFixtures, makeStateDir, spawnFixture } from '../../fixtures/pool/harness.js'
import { makeEntry as entry } from '../contract/lease-store-contract.js'

describe('FileLeaseStore', () => {
  let state: ReturnType<typeof makeStateDir>
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

  test('symlink lock: a lock left by a SIGKILLed process is taken over (its holder is judged dead by pid, no stale period)', async () => {
    state = makeStateDir()
    const holder = spawnFixture('lock-holder.mjs', { store: { kind: 'file', stateDir: state.dir, lock: 'symlink' } })
    await holder.message((m) => m.locked === true, 'locked')
    holder.child.kill('SIGKILL')
    await holder.exited
    const store = new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir, lock: 'symlink' })
    expect(readdirSync(join(state.dir, 'leases'))).toContain('fake.json.lock')
    await store.update((table) => {
      table.after = entry('after')
    })
    expect(Object.keys(await store.read())).toEqual(['after'])
    expect(readdirSync(join(state.dir, 'leases'))).not.toContain('fake.json.lock')
  }, 60_000)

  test('abstract-socket lock (the Linux default): nothing on disk, and the kernel frees it when its holder is SIGKILLed', async () => {
    state = makeStateDir()
    const holder = spawnFixture('lock-holder.mjs', { store: { kind: 'file', stateDir: state.dir } })
    await holder.message((m) => m.locked === true, 'locked')
    expect(readdirSync(join(state.dir, 'leases'))).toEqual([])
    holder.child.kill('SIGKILL')
    await holder.exited
    const store = new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir })
    await store.update((table) => {
      table.after = entry('after')
    })
    expect(Object.keys(await store.read())).toEqual(['after'])
    // The table and its copy (lease-file.ts); no lock file.
    expect(readdirSync(join(state.dir, 'leases')).sort()).toEqual(['fake.json', 'fake.json.wal'])
  }, 60_000)

  test.each(['abstract-socket', 'symlink'] as const)('the leases folder removed between updates (%s lock): the next update makes it again', async (lock) => {
    state = makeStateDir()
    const store = new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir, lock })
    await store.update((table) => {
      table.a = entry('a')
    })
    rmSync(join(state.dir, 'leases'), { recursive: true, force: true })
    await store.update((table) => {
      expect(table).toEqual({})
      table.b = entry('b')
    })
    expect(Object.keys(await store.read())).toEqual(['b'])
    await store.close()
  })

  test('a file torn by a writer killed mid-write (new first page, old rest) is restored from its copy, with a warning', async () => {
    state = makeStateDir()
    const warnings: string[] = []
    const store = new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir, warn: (message) => warnings.push(message) })
    const names = Array.from({ length: 60 }, (_, i) => `vm-${i}`)
    await store.update((table) => {
      for (const name of names) table[name] = entry(name, { state: 'leased', key: `a-long-lease-key-${'k'.repeat(80)}` })
    })
    const old = readFileSync(store.path, 'utf8')
    await store.update((table) => {
      for (const name of names) {
        table[name]!.state = 'idle'
        delete table[name]!.key
      }
    })
    const next = readFileSync(store.walPath, 'utf8')
    expect(readFileSync(store.path, 'utf8')).toBe(next)
    expect(old.length).toBeGreaterThan(next.length + 4_096)
    // What the kernel leaves when it stops a write between pages: the new text's first page over the old text.
    writeFileSync(store.path, next.slice(0, 4_096) + old.slice(4_096))

    const table = await store.read()
    expect(Object.keys(table)).toEqual(names)
    expect(Object.values(table).every((lease) => lease.state === 'idle')).toBe(true)
    expect(warnings).toEqual([expect.stringMatching(/was torn .*restored it from .*fake\.json\.wal/)])
    // Repaired on disk: the next lock-free read needs no lock and warns no more.
    expect(readFileSync(store.path, 'utf8')).toBe(next)
    await store.read()
    expect(warnings).toHaveLength(1)
    expect(readdirSync(join(state.dir, 'leases')).filter((file) => file.includes('corrupt'))).toEqual([])
  })

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

  test("a rebuilt entry named by a live owner's reaper marker is that owner's; a dead owner's marker gives nothing", async () => {
    state = makeStateDir()
    const provider = fakeProvider({ stateDir: state.dir })
    for (const name of ['vitest-worker-live-1', 'vitest-worker-dead-1', 'vitest-worker-none-1']) await provider.create({ name })
    const me = { pid: process.pid, host: hostname(), startTime: getProcessStartTime(process.pid) }
    mkdirSync(join(state.dir, 'reapers'), { recursive: true })
    writeFileSync(join(state.dir, 'reapers', 'live.json'), JSON.stringify({ owner: me, runId: 'live', provider: 'fake', names: ['vitest-worker-live-1'] }))
    writeFileSync(join(state.dir, 'reapers', 'dead.json'), JSON.stringify({ owner: { ...me, startTime: (me.startTime ?? 0) - 1 }, runId: 'dead', provider: 'fake', names: ['vitest-worker-dead-1'] }))
    const warnings: string[] = []
    const store = new FileLeaseStore({ provider, stateDir: state.dir, warn: (message) => warnings.push(message) })
    mkdirSync(join(state.dir, 'leases'), { recursive: true })
    writeFileSync(store.path, 'garbage')
    const table = await store.read()
    expect(table['vitest-worker-live-1']).toMatchObject({ state: 'leased', owner: me, runId: 'live', recoveredAt: expect.any(String) })
    expect(table['vitest-worker-dead-1']).toMatchObject({ state: 'leased', owner: null, runId: 'unknown' })
    expect(table['vitest-worker-none-1']).toMatchObject({ state: 'leased', owner: null, runId: 'unknown' })
    expect(warnings[0]).toMatch(/rebuilt 3 entries .*except 1 named by live owners' reaper markers/)
  })
})

afterAll(killFixtures)
