/**
 * createPool in one process: keys, concurrency, fresh VMs, drain, warm hand-back with reset, ttl and max
 * eviction, dead holders reclaimed, bad options. Real fake-provider VMs in a temp state dir.
 */
import { spawn, spawnSync } from 'node:child_process'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { afterEach, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { countingProvider, type CountingProvider } from '../../src/providers/counting-provider.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { createPool, type PoolOptions, type VmPool } from '../../src/pool/vm-pool.js'
import { getProcessStartTime } from '../../src/util/process-info.js'
import { ReaperHandle } from '../../src/pool/reaper.js'
import type { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import type { VmProvider } from '../../src/providers/vm-provider.js'
import { isPidRunning, makeStateDir, waitFor } from '../../fixtures/pool/harness.js'

describe('createPool', () => {
  let state: ReturnType<typeof makeStateDir>
  let provider: CountingProvider
  const pools: VmPool[] = []
  const make = (options: Partial<PoolOptions> = {}) => {
    state ??= makeStateDir()
    provider ??= countingProvider(fakeProvider({ stateDir: state.dir }))
    const pool = createPool({ provider, stateDir: state.dir, reaper: false, ...options })
    pools.push(pool)
    return pool
  }
  const vmNames = async () => (await provider.list()).map((info) => info.name).sort()
  const leases = async (pool: VmPool) => pool.store.read()

  afterEach(async () => {
    for (const pool of pools.splice(0)) await pool.drain().catch(() => {})
    state?.dispose()
    state = undefined as never
    provider = undefined as never
  })

  test('same key → the same VM while held; names are <prefix>-<runId>-<key>', async () => {
    const pool = make({ runId: 'run1' })
    const a = await pool.acquire('slot-1')
    const b = await pool.acquire('slot-1')
    expect(a.name).toBe('vitest-worker-run1-slot-1')
    expect(b.vm).toBe(a.vm)
    expect((await a.vm.exec('echo $VM_POOL_VM')).stdout.trim()).toBe(a.name)
    const other = await pool.acquire(2)
    expect(other.name).toBe('vitest-worker-run1-2')
    expect(provider.stats.created).toBe(2)
    expect(pool.stats).toMatchObject({ created: 2, reused: 1 })
    // The record crosses processes: it is plain JSON.
    expect(JSON.parse(JSON.stringify(a.vm.record))).toEqual(a.vm.record)
    // Held by two: the first release keeps it.
    await a.release()
    expect(await vmNames()).toContain(a.name)
    await b.release()
    expect(await vmNames()).not.toContain(a.name)
  })

  test('concurrent acquires of one key create ONE VM', async () => {
    const pool = make()
    const got = await Promise.all(Array.from({ length: 6 }, () => pool.acquire('k')))
    expect(new Set(got.map((lease) => lease.vm)).size).toBe(1)
    expect(provider.stats.created).toBe(1)
    expect(pool.stats.reused).toBe(5)
    const entry = (await leases(pool))[got[0]!.name]!
    expect(entry).toMatchObject({ state: 'leased', key: 'k', kind: 'slot', owner: { pid: process.pid, host: hostname() } })
  })

  test('fresh(): named vitest-fresh-<runId>-<n>, deleted at the end of an await using block', async () => {
    const pool = make({ runId: 'run2' })
    let name: string
    {
      await using vm = await pool.fresh({ labels: { purpose: 'test' } })
      name = vm.name
      expect(name).toBe('vitest-fresh-run2-1')
      expect(vm.record.spec.labels).toEqual({ purpose: 'test' })
      expect((await vm.exec('pwd')).exitCode).toBe(0)
      expect((await leases(pool))[name]).toMatchObject({ state: 'leased', kind: 'fresh' })
    }
    expect(await vmNames()).not.toContain(name)
    expect(await leases(pool)).toEqual({})
    expect(pool.stats).toMatchObject({ created: 1, deleted: 1 })
  })

  test('fresh({ name }) uses the name; keep() leaves the VM running and forgets its lease', async () => {
    const pool = make({ prefix: 'vm-pool-wf' })
    const vm = await pool.fresh({ name: 'vm-pool-wf-abc-1' })
    await expect(pool.fresh({ name: 'vm-pool-wf-abc-1' })).rejects.toMatchObject({ code: 'VMPOOL_CREATE_FAILED' })
    await vm.keep()
    await pool.drain()
    expect(await vmNames()).toEqual(['vm-pool-wf-abc-1'])
    expect(await leases(pool)).toEqual({})
  })

  test('fresh({ name }) refuses the name of an existing VM and leaves that VM alone (with or without a lease)', async () => {
    const pool = make({ prefix: 'vm-pool-wf' })
    // No lease: kept earlier (keep(), --keep-vm) or made by hand. Its files must survive the refusal.
    const orphan = await provider.create({ name: 'vm-pool-wf-kept-1' })
    const orphanVm = await provider.connect(orphan)
    await orphanVm.exec('echo precious > data')
    await expect(pool.fresh({ name: 'vm-pool-wf-kept-1' })).rejects.toMatchObject({ code: 'VMPOOL_CREATE_FAILED', message: expect.stringContaining('already exists') })
    expect(await vmNames()).toEqual(['vm-pool-wf-kept-1'])
    expect((await orphanVm.exec('cat data')).stdout).toBe('precious\n')
    expect(await leases(pool)).toEqual({})
    // Leased by another pool: refused, still held by its owner.
    const other = make({ prefix: 'vm-pool-wf' })
    const held = await other.fresh({ name: 'vm-pool-wf-held-1' })
    await expect(pool.fresh({ name: 'vm-pool-wf-held-1' })).rejects.toMatchObject({ code: 'VMPOOL_CREATE_FAILED' })
    expect((await held.exec('echo ok')).stdout).toBe('ok\n')
    expect((await leases(pool))['vm-pool-wf-held-1']).toMatchObject({ state: 'leased' })
    await pool.drain()
    expect(await vmNames()).toEqual(['vm-pool-wf-held-1', 'vm-pool-wf-kept-1'])
    await held.delete()
    await orphanVm.close?.()
    await provider.delete('vm-pool-wf-kept-1')
  })

  test('drain() deletes everything without keepWarm and closes the pool', async () => {
    const pool = make()
    await pool.acquire('a')
    await pool.acquire('b')
    const fresh = await pool.fresh()
    const result = await pool.drain()
    expect(result.deleted.sort()).toEqual([...provider.stats.names].sort())
    expect(result).toMatchObject({ keptWarm: [], leaked: [] })
    expect(await vmNames()).toEqual([])
    expect(await leases(pool)).toEqual({})
    await fresh.delete() // already gone: idempotent
    const error = await pool.acquire('c').catch((e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_POOL_CLOSED')).toBe(true)
  })

  test('keepWarm: false is off, as in the Vitest plugin: release deletes the VM', async () => {
    const pool = make({ keepWarm: false })
    const lease = await pool.acquire('a')
    await lease.release()
    expect(await vmNames()).toEqual([])
    expect(pool.stats).toMatchObject({ created: 1, deleted: 1, warmed: 0 })
  })

  test('drain() during a fresh() boot waits for that VM to be deleted before it resolves', async () => {
    state = makeStateDir()
    const fake = fakeProvider({ stateDir: state.dir, bootDelayMs: 200 })
    // A slow delete makes the race visible: drain must not resolve while fresh()'s late delete still runs.
    const slow: VmProvider = { ...fake, name: fake.name, delete: async (name) => { await new Promise((r) => setTimeout(r, 300)); await fake.delete(name) } }
    provider = countingProvider(slow)
    const pool = createPool({ provider, stateDir: state.dir, reaper: false })
    pools.push(pool)
    const booting = pool.fresh().catch((e: unknown) => e)
    await new Promise((r) => setTimeout(r, 50))
    await pool.drain()
    expect(await fake.list()).toEqual([])
    expect(isVmPoolError(await booting, 'VMPOOL_POOL_CLOSED')).toBe(true)
    expect(provider.stats).toMatchObject({ created: 1, deleted: 1, live: 0 })
  })

  test('keepWarm: release runs reset and leaves the VM idle; the next acquire (any key, any pool) adopts it', async () => {
    const keepWarm = { ttlMs: 600_000, max: 2, reset: 'rm -f dirty' }
    const first = make({ keepWarm })
    const lease = await first.acquire('a')
    await lease.vm.exec('touch dirty kept')
    await lease.release()
    const idle = (await leases(first))[lease.name]!
    expect(idle).toMatchObject({ state: 'idle', owner: null })
    expect(Date.parse(idle.expiresAt!) - Date.parse(idle.idleSince!)).toBe(600_000)

    const second = make({ keepWarm })
    const adopted = await second.acquire('other-key')
    expect(adopted).toMatchObject({ name: lease.name, adopted: true })
    expect((await adopted.vm.exec('ls')).stdout.split('\n')).toEqual(['kept', ''])
    expect(provider.stats.created).toBe(1)
    expect(second.stats).toMatchObject({ created: 0, reused: 1 })
    expect((await leases(second))[lease.name]).toMatchObject({ state: 'leased', key: 'other-key', runId: second.runId })
  })

  test('keepWarm: a failing reset deletes the VM instead; discard deletes too', async () => {
    const warnings: string[] = []
    const pool = make({ keepWarm: { ttlMs: 600_000, max: 4, reset: 'exit 3' }, warn: (m) => warnings.push(m) })
    const lease = await pool.acquire('a')
    await lease.release()
    expect(await vmNames()).toEqual([])
    expect(warnings.join('\n')).toMatch(/keepWarm.reset failed in .*exited with 3/)
    const plain = make({ keepWarm: { ttlMs: 600_000, max: 4 } })
    const other = await plain.acquire('b')
    await other.release({ discard: true })
    expect(await vmNames()).toEqual([])
  })

  test("keepWarm reset: 'snapshot' restores the VM through provider.reset; the idle entry carries the new record", async () => {
    state = makeStateDir()
    const fake = fakeProvider({ stateDir: state.dir })
    const resets: string[] = []
    // A provider whose "snapshot" is a brand-new fake VM under the same name: nothing written before survives.
    const resettable: VmProvider = {
      name: fake.name,
      create: (spec) => fake.create(spec),
      connect: (record) => fake.connect(record),
      delete: (name) => fake.delete(name),
      list: () => fake.list(),
      async reset(name) {
        resets.push(name)
        await fake.delete(name)
        return fake.create({ name })
      },
    }
    const keepWarm = { ttlMs: 600_000, max: 2, reset: 'snapshot' }
    const first = make({ provider: resettable, keepWarm })
    const lease = await first.acquire('a')
    await lease.vm.exec('touch dirty')
    const before = lease.vm.record
    await lease.release()
    expect(resets).toEqual([lease.name])
    const idle = (await leases(first))[lease.name]!
    expect(idle).toMatchObject({ state: 'idle', owner: null })
    expect(idle.record).not.toEqual(before)
    const adopted = await make({ provider: resettable, keepWarm }).acquire('b')
    expect(adopted).toMatchObject({ name: lease.name, adopted: true })
    expect((await adopted.vm.exec('ls')).stdout).toBe('')
    await adopted.release()
  })

  test('keepWarm: true resets to the snapshot by default where the provider can; reset: false opts out', async () => {
    state = makeStateDir()
    const fake = fakeProvider({ stateDir: state.dir })
    const resets: string[] = []
    const resettable: VmProvider = {
      name: fake.name,
      create: (spec) => fake.create(spec),
      connect: (record) => fake.connect(record),
      delete: (name) => fake.delete(name),
      list: () => fake.list(),
      async reset(name) {
        resets.push(name)
        await fake.delete(name)
        return fake.create({ name })
      },
    }
    const handOver = async (keepWarm: PoolOptions['keepWarm'], provider: VmProvider) => {
      const first = make({ provider, keepWarm })
      const lease = await first.acquire('a')
      await lease.vm.exec('touch previous-holder')
      await lease.release()
      const next = await make({ provider, keepWarm }).acquire('b')
      expect(next).toMatchObject({ name: lease.name, adopted: true })
      const files = (await next.vm.exec('ls')).stdout
      await next.release({ discard: true })
      return files
    }
    // The next holder never sees the previous one's files.
    expect(make({ provider: resettable, keepWarm: true }).options.keepWarm).toEqual({ ttlMs: 30 * 60_000, max: 4, reset: 'snapshot' })
    expect(await handOver(true, resettable)).toBe('')
    expect(await handOver({ ttlMs: 600_000, max: 2 }, resettable)).toBe('')
    expect(resets).toHaveLength(2)
    // Opt-out: handed over as it is.
    expect(await handOver({ reset: false }, resettable)).toBe('previous-holder\n')
    expect(resets).toHaveLength(2)
    // A provider that cannot reset (the fake): nothing to reset with; documented.
    expect(make({ provider: fake, keepWarm: true }).options.keepWarm).toEqual({ ttlMs: 30 * 60_000, max: 4 })
  })

  test("keepWarm reset: 'snapshot' needs provider.reset; a failing reset deletes the VM", async () => {
    const error = (() => {
      try {
        make({ keepWarm: { ttlMs: 600_000, max: 2, reset: 'snapshot' } })
      } catch (e) {
        return e
      }
    })()
    expect(isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS')).toBe(true)
    expect((error as Error).message).toMatch(/needs a provider that can reset a VM to a snapshot/)
    const fake = fakeProvider({ stateDir: state.dir })
    const warnings: string[] = []
    const broken: VmProvider = { name: fake.name, create: (spec) => fake.create(spec), connect: (record) => fake.connect(record), delete: (name) => fake.delete(name), list: () => fake.list(), reset: async () => Promise.reject(new Error('the snapshot is gone')) }
    const pool = make({ provider: broken, keepWarm: { ttlMs: 600_000, max: 2, reset: 'snapshot' }, warn: (m) => warnings.push(m) })
    await (await pool.acquire('a')).release()
    expect(await fake.list()).toEqual([])
    expect(warnings.join('\n')).toMatch(/resetting .* to its snapshot failed \(the snapshot is gone\); deleting it/)
  })

  test('keepWarm.max: beyond max idle VMs, the oldest are deleted', async () => {
    const pool = make({ keepWarm: { ttlMs: 600_000, max: 1 } })
    const a = await pool.acquire('a')
    const b = await pool.acquire('b')
    await a.release()
    await b.release()
    expect(await vmNames()).toEqual([b.name])
    expect(pool.stats).toMatchObject({ created: 2, warmed: 2, deleted: 1 })
  })

  test('keepWarm.ttlMs: an idle VM past its ttl is never adopted and is deleted by the next pool operation', async () => {
    const pool = make({ keepWarm: { ttlMs: 1, max: 4 } })
    const a = await pool.acquire('a')
    await a.release()
    const expiresAt = Date.parse((await leases(pool))[a.name]!.expiresAt!)
    await waitFor(() => Date.now() > expiresAt, 'the ttl to pass', 5_000)
    const next = make({ keepWarm: { ttlMs: 600_000, max: 4 } })
    const b = await next.acquire('b')
    expect(b.adopted).toBe(false)
    await next.drain()
    expect(await vmNames()).toEqual([b.name])
  })

  test('an idle VM that fails its check is deleted and replaced', async () => {
    const warnings: string[] = []
    const pool = make({ keepWarm: { ttlMs: 600_000, max: 4 }, warn: (m) => warnings.push(m) })
    const a = await pool.acquire('a')
    await a.release()
    // Gone behind the pool's back (a crashed VM): the lease still says idle.
    await fakeProvider({ stateDir: state.dir }).delete(a.name)
    const b = await pool.acquire('b')
    expect(b.adopted).toBe(false)
    expect(warnings.join('\n')).toContain(`idle VM ${a.name} failed its check before adoption`)
    expect(Object.keys(await leases(pool))).toEqual([b.name])
  })

  test('a lease whose holder died is reclaimed (deleted) by the next pool operation', async () => {
    const pool = make()
    const dead = spawnSync('true').pid!
    const ghost = await provider.create({ name: 'vitest-worker-ghost-1' })
    await pool.store.update((table) => {
      const at = new Date().toISOString()
      table[ghost.name] = { name: ghost.name, provider: 'fake', specHash: 'x', kind: 'slot', state: 'leased', owner: { pid: dead, host: hostname(), startTime: 1 }, runId: 'ghost', record: ghost, createdAt: at, updatedAt: at }
    })
    await pool.acquire('a')
    await pool.drain()
    expect(await vmNames()).toEqual([])
    expect(pool.stats.deleted).toBe(2)
  })

  test('pid reuse: a live pid with another start time is not the holder (reclaimed); with its own start time it is (kept)', async () => {
    const pool = make()
    const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' })
    try {
      const startTime = getProcessStartTime(sleeper.pid!)
      expect(startTime).not.toBeNull()
      const lease = async (name: string, owner: { pid: number; host: string; startTime: number }) => {
        const record = await provider.create({ name })
        await pool.store.update((table) => {
          const at = new Date().toISOString()
          table[name] = { name, provider: 'fake', specHash: 'x', kind: 'slot', state: 'leased', owner, runId: 'other', record, createdAt: at, updatedAt: at }
        })
      }
      await lease('vitest-worker-other-live', { pid: sleeper.pid!, host: hostname(), startTime: startTime! })
      // The pid is running, but it is not the process that took the lease: that one died and its pid was reused.
      await lease('vitest-worker-other-reused', { pid: sleeper.pid!, host: hostname(), startTime: startTime! - 1 })
      await pool.acquire('a')
      await pool.drain()
      expect(await vmNames()).toEqual(['vitest-worker-other-live'])
      expect(Object.keys(await leases(pool))).toEqual(['vitest-worker-other-live'])
    } finally {
      sleeper.kill('SIGKILL')
    }
  })

  test('after a corrupt lease file is rebuilt, the holder re-registers its leases on its next update', async () => {
    const warnings: string[] = []
    const pool = make({ warn: (m) => warnings.push(m) })
    const a = await pool.acquire('a')
    writeFileSync((pool.store as FileLeaseStore).path, '{ not json')
    const b = await pool.acquire('b')
    expect(warnings.join('\n')).toMatch(/was corrupt/)
    const table = await leases(pool)
    for (const name of [a.name, b.name]) expect(table[name]).toMatchObject({ state: 'leased', owner: { pid: process.pid }, runId: pool.runId })
    expect(table[a.name]!.recoveredAt).toBeUndefined()
  })

  test('after the lease file was deleted, or restored from an older copy, the holder puts its leases back on its next update', async () => {
    const pool = make({ keepWarm: { ttlMs: 600_000, max: 4 } })
    const a = await pool.acquire('a')
    const path = (pool.store as FileLeaseStore).path
    const withA = readFileSync(path, 'utf8')
    rmSync(path)
    const b = await pool.acquire('b')
    let table = await leases(pool)
    for (const name of [a.name, b.name]) expect(table[name]).toMatchObject({ state: 'leased', owner: { pid: process.pid }, runId: pool.runId })
    // An older copy: b is missing and a is an older version of itself (here: the same); b comes back.
    writeFileSync(path, withA)
    await (await pool.acquire('c')).release()
    table = await leases(pool)
    expect(table[b.name]).toMatchObject({ state: 'leased', owner: { pid: process.pid }, key: 'b' })
    expect(table[a.name]).toMatchObject({ state: 'leased', key: 'a' })
  })

  test('bad options and keys are refused with VMPOOL_INVALID_OPTIONS, naming the problem', async () => {
    state = makeStateDir()
    provider = countingProvider(fakeProvider({ stateDir: state.dir }))
    const refuse = (options: Record<string, unknown>, message: RegExp) => {
      const error = (() => {
        try {
          createPool({ provider, stateDir: state.dir, reaper: false, ...options } as PoolOptions)
        } catch (e) {
          return e
        }
      })()
      expect(isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS')).toBe(true)
      expect((error as Error).message).toMatch(message)
    }
    refuse({ prefix: 'Bad_Prefix' }, /invalid name prefix "Bad_Prefix"/)
    refuse({ runId: 'has-dash' }, /invalid runId "has-dash"/)
    refuse({ keepWarm: { ttlMs: -1, max: 1 } }, /keepWarm\.ttlMs/)
    refuse({ spec: { cpus: 'two' } }, /spec\.cpus/)
    refuse({ reaper: true, provider: { ...provider, name: 'homemade' } }, /reaper cannot recreate provider "homemade"/)
    const pool = make()
    await expect(pool.acquire('Not A Key')).rejects.toMatchObject({ code: 'VMPOOL_INVALID_OPTIONS' })
    expect(Object.isFrozen(pool.options)).toBe(true)
  })

  describe('with the reaper', () => {

    test('starts a watchdog with the first VM and stops it on drain', async () => {
      state = makeStateDir()
      const pool = make({ reaper: { providerName: 'fake', providerOptions: { stateDir: state.dir } } })
      expect(pool.reaperPid).toBeUndefined()
      await pool.acquire('a')
      const pid = pool.reaperPid!
      expect(isPidRunning(pid)).toBe(true)
      await pool.drain()
      await waitFor(() => !isPidRunning(pid), 'the watchdog to exit after drain')
    }, 30_000)

    test('one failed marker write does not stop later ones (the marker keeps naming what the owner holds)', async () => {
      state = makeStateDir()
      const handle = await ReaperHandle.start({ runId: 'r1', providerName: 'fake', providerOptions: { stateDir: state.dir }, stateDir: state.dir })
      try {
        // A directory where the marker goes: the atomic rename fails, as on a full disk.
        rmSync(handle.markerPath)
        mkdirSync(handle.markerPath)
        await expect(handle.setHeld(['vitest-worker-r1-a'])).rejects.toThrow()
        rmSync(handle.markerPath, { recursive: true })
        await handle.setHeld(['vitest-worker-r1-b'])
        expect(JSON.parse(readFileSync(handle.markerPath, 'utf8')).names).toEqual(['vitest-worker-r1-b'])
      } finally {
        await handle.stop()
        await waitFor(() => !isPidRunning(handle.pid), 'the watchdog to exit')
      }
    }, 30_000)
  })
})
