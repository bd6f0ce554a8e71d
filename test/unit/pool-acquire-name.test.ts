/**
 * `acquire(key, { name })` (the pytest plugin's `pytest-worker-<pid>-<unix time>` worker VMs) and
 * `lease.reset()` (a held VM back to the provider's saved state). Real fake-provider VMs in a temp state dir.
 */
import { spawn } from 'node:child_process'
import { afterEach, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { collectGarbage } from '../../src/pool/garbage-collector.js'
import { judgeNamedOwner, makePytestWorkerName } from '../../src/util/vm-name.js'
import { createPool, type PoolOptions, type VmPool } from '../../src/pool/vm-pool.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import type { VmProvider } from '../../src/providers/vm-provider.js'
import { getProcessStartUnixMs } from '../../src/util/process-info.js'
import { makeStateDir } from '../../fixtures/pool/harness.js'

const nowSeconds = () => Math.floor(Date.now() / 1000)

describe('acquire(key, { name })', () => {
  let state: ReturnType<typeof makeStateDir> | undefined
  const pools: VmPool[] = []
  const make = (options: Partial<PoolOptions> = {}) => {
    state ??= makeStateDir()
    const pool = createPool({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir, reaper: false, ...options })
    pools.push(pool)
    return pool
  }
  const list = async () => (await fakeProvider({ stateDir: state!.dir }).list()).map((info) => info.name).sort()

  afterEach(async () => {
    for (const pool of pools.splice(0)) await pool.drain().catch(() => {})
    state?.dispose()
    state = undefined
  })

  test('boots the VM under that exact name, reserved in the lease table like any other; the same key returns it', async () => {
    const pool = make({ runId: 'run1' })
    const name = makePytestWorkerName(process.pid, nowSeconds())
    expect(name).toMatch(/^pytest-worker-\d+-\d{10}$/)
    const lease = await pool.acquire('worker', { name })
    expect(lease).toMatchObject({ name, key: 'worker', adopted: false })
    expect((await lease.vm.exec('printf %s "$VM_POOL_VM"')).stdout).toBe(name)
    expect((await pool.store.read())[name]).toMatchObject({ kind: 'slot', state: 'leased', key: 'worker', runId: 'run1', owner: { pid: process.pid } })
    // A key already held keeps its VM: the name of a second acquire does not matter.
    const again = await pool.acquire('worker', { name: makePytestWorkerName(process.pid, nowSeconds() + 1) })
    expect(again.vm).toBe(lease.vm)
    await again.release()
    await lease.release()
    expect(await list()).toEqual([])
  })

  test('a name another holder has is refused (VMPOOL_CREATE_FAILED), never suffixed', async () => {
    const name = makePytestWorkerName(process.pid, nowSeconds())
    const first = await make().acquire('worker', { name })
    const error = await make()
      .acquire('worker', { name })
      .catch((e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_CREATE_FAILED')).toBe(true)
    expect((error as Error).message).toContain(`a VM named ${name} is already leased`)
    expect(await list()).toEqual([name])
    await first.release()
  })

  test('with an idle warm VM of the same spec, the lease adopts it and it keeps the name it was booted with', async () => {
    const keepWarm = { ttlMs: 600_000, max: 2 }
    const warm = await make({ runId: 'vitest1', keepWarm }).acquire(1)
    await warm.release()
    const lease = await make({ keepWarm }).acquire('worker', { name: makePytestWorkerName(process.pid, nowSeconds()) })
    expect(lease).toMatchObject({ name: 'vitest-worker-vitest1-1', adopted: true })
    await lease.release()
  })

  // gc judges a lease-less pytest-worker name by its pid and time (judgeNamedOwner); the pool refuses
  // to boot under a name gc would already call dead, so the two never disagree.
  test.for([
    { case: 'a dead pid', name: async () => makePytestWorkerName(await deadPid(), nowSeconds()), reason: /pid \d+ is gone/ },
    { case: 'a pid that started after the time in the name (reused pid)', name: async () => makePytestWorkerName(process.pid, nowSeconds() - 3600), reason: /started after the VM was named/ },
  ])('a pytest-worker name with $case is refused with VMPOOL_INVALID_NAME, as gc would judge it', async ({ name: makeName, reason }) => {
    const name = await makeName()
    expect(judgeNamedOwner(name)).toMatchObject({ alive: false, reason: expect.stringMatching(reason) })
    const error = await make()
      .acquire('worker', { name })
      .catch((e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_INVALID_NAME')).toBe(true)
    expect((error as Error).message).toMatch(reason)
    expect((error as Error).message).toMatch(/vm-pool gc/)
    expect(await list()).toEqual([])
  })

  test('a live pytest worker name is kept by gc without a lease, and deleted once that process is gone', async () => {
    state = makeStateDir()
    const provider = fakeProvider({ stateDir: state.dir })
    const worker = spawn('sleep', ['60'], { stdio: 'ignore' })
    await new Promise((resolve) => worker.once('spawn', resolve))
    // Named after the worker started, as the plugin does on first use (whole seconds, rounded up).
    const startedAt = getProcessStartUnixMs(worker.pid!)!
    const name = makePytestWorkerName(worker.pid!, Math.ceil(startedAt / 1000))
    expect(judgeNamedOwner(name)).toMatchObject({ alive: true })
    await provider.create({ name })
    const kept = await collectGarbage({ provider, stateDir: state.dir })
    expect(kept.kept.map((decision) => [decision.name, decision.reason])).toEqual([[name, `pytest worker pid ${worker.pid} is alive`]])
    worker.kill('SIGKILL')
    await new Promise((resolve) => worker.once('exit', resolve))
    const swept = await collectGarbage({ provider, stateDir: state.dir })
    expect(swept.deleted.map((decision) => decision.name)).toEqual([name])
    expect(await list()).toEqual([])
  })
})

describe('lease.reset()', () => {
  let state: ReturnType<typeof makeStateDir> | undefined
  afterEach(() => {
    state?.dispose()
    state = undefined
  })

  test('restores the held VM through provider.reset: same name and lease, a new connection, the entry carries the new record', async () => {
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
    const pool = createPool({ provider: resettable, stateDir: state.dir, reaper: false })
    try {
      const lease = await pool.acquire('worker')
      const other = await pool.acquire('worker')
      await lease.vm.exec('touch dirty')
      const before = { vm: lease.vm, record: lease.vm.record }
      await lease.reset()
      expect(resets).toEqual([lease.name])
      expect(lease.vm).not.toBe(before.vm)
      // Every lease on the key sees the new connection.
      expect(other.vm).toBe(lease.vm)
      expect((await lease.vm.exec('ls')).stdout).toBe('')
      expect(lease.vm.record.createdAt).not.toBe(before.record.createdAt)
      expect((await pool.store.read())[lease.name]).toMatchObject({ state: 'leased', record: lease.vm.record })
      await other.release()
      await lease.release()
      await expect(lease.reset()).rejects.toMatchObject({ code: 'VMPOOL_POOL_CLOSED' })
      expect(await fake.list()).toEqual([])
    } finally {
      await pool.drain().catch(() => {})
    }
  })

  test('a provider without reset: VMPOOL_INVALID_OPTIONS naming the provider, the VM untouched', async () => {
    state = makeStateDir()
    const pool = createPool({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir, reaper: false })
    try {
      const lease = await pool.acquire('worker')
      await lease.vm.exec('touch kept')
      const error = await lease.reset().catch((e: unknown) => e)
      expect(isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS')).toBe(true)
      expect((error as Error).message).toMatch(/fake cannot reset a VM to a snapshot/)
      expect((await lease.vm.exec('ls')).stdout.trim()).toBe('kept')
    } finally {
      await pool.drain()
    }
  })
})

/** A pid that is not running: a child that already exited (and was reaped). */
async function deadPid(): Promise<number> {
  const child = spawn('true', { stdio: 'ignore' })
  await new Promise((resolve) => child.once('exit', resolve))
  return child.pid!
}
