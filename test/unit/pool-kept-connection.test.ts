/**
 * A VM handed back warm keeps its connection for PARKED_CONNECTION_TTL_MS (pool-vm-lifecycle.ts): the same
 * process adopting it again, untouched by anyone else, gets that connection back without a connect or a
 * guest command (the provider's `isRunning` is the check); anything else goes through the full check.
 * Real fake-provider VMs in a temp state dir; the wrapper below only counts calls.
 */
import { afterEach, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { PARKED_CONNECTION_TTL_MS } from '../../src/pool/pool-vm-lifecycle.js'
import { createPool, type PoolOptions, type VmPool } from '../../src/pool/vm-pool.js'
import type { Vm, VmProvider } from '../../src/providers/vm-provider.js'
import { makeStateDir } from '../../fixtures/pool/harness.js'

interface Counts {
  connect: number
  exec: number
  close: number
  isRunning: number
}

/** The fake provider with its connects, execs, closes and `isRunning` calls counted (`isRunning: false` drops the method). */
function counted(inner: VmProvider, options: { isRunning?: boolean } = {}): { provider: VmProvider; counts: Counts } {
  const counts: Counts = { connect: 0, exec: 0, close: 0, isRunning: 0 }
  const provider: VmProvider = {
    name: inner.name,
    create: (spec) => inner.create(spec),
    delete: (name) => inner.delete(name),
    list: () => inner.list(),
    async connect(record) {
      counts.connect++
      const vm = await inner.connect(record)
      const wrapped: Vm = {
        ...vm,
        exec: (command, execOptions) => {
          counts.exec++
          return vm.exec(command, execOptions)
        },
        close: async () => {
          counts.close++
          await vm.close?.()
        },
      }
      return wrapped
    },
  }
  if (options.isRunning !== false) {
    provider.isRunning = async (record) => {
      counts.isRunning++
      return inner.isRunning!(record)
    }
  }
  return { provider, counts }
}

describe('kept connections of warm VMs', () => {
  let state: ReturnType<typeof makeStateDir> | undefined
  const pools: VmPool[] = []
  const keepWarm = { ttlMs: 600_000, max: 4 }
  const setup = (options: { isRunning?: boolean } = {}) => {
    state ??= makeStateDir()
    return counted(fakeProvider({ stateDir: state.dir }), options)
  }
  const make = (provider: VmProvider, options: Partial<PoolOptions> = {}) => {
    const pool = createPool({ provider, stateDir: state!.dir, reaper: false, keepWarm, ...options })
    pools.push(pool)
    return pool
  }

  afterEach(async () => {
    for (const pool of pools.splice(0)) await pool.drain().catch(() => {})
    state?.dispose()
    state = undefined
  })

  test('adopted again by the same pool: the kept connection, no connect and no exec; isRunning is the check', async () => {
    const { provider, counts } = setup()
    const pool = make(provider)
    const first = await pool.acquire('a')
    await first.release()
    expect(counts).toEqual({ connect: 1, exec: 0, close: 0, isRunning: 0 })
    const again = await pool.acquire('b')
    expect(again).toMatchObject({ name: first.name, adopted: true })
    expect(counts).toEqual({ connect: 1, exec: 0, close: 0, isRunning: 1 })
    // The connection works: it is the VM's.
    expect((await again.vm.exec('echo hi')).stdout).toBe('hi\n')
    await again.release()
    await pool.drain()
    expect(counts.close).toBe(1)
  })

  test('without isRunning, the kept connection runs `true` instead of a new connect', async () => {
    const { provider, counts } = setup({ isRunning: false })
    const pool = make(provider)
    await (await pool.acquire('a')).release()
    await pool.acquire('b')
    expect(counts).toMatchObject({ connect: 1, exec: 1 })
  })

  test('the pool prefers the idle VM it holds a connection to over a more recently idle one', async () => {
    const { provider, counts } = setup()
    const mine = make(provider)
    const other = make(provider)
    const a = await mine.acquire('a')
    const b = await other.acquire('b')
    await a.release()
    await b.release()
    const again = await mine.acquire('c')
    expect(again.name).toBe(a.name)
    expect(counts.connect).toBe(2)
  })

  test('a VM another pool handed back a moment ago is left to it (PARKED_GRACE_MS): that pool takes it back, the other boots its own', async () => {
    const { provider } = setup()
    const mine = make(provider)
    const other = make(provider)
    const a = await mine.acquire('a')
    await a.release()
    // The only idle VM was handed back within PARKED_GRACE_MS: `other` waits the rest of it out before taking it.
    const otherLease = other.acquire('x')
    await new Promise((resolve) => setTimeout(resolve, 20))
    const again = await mine.acquire('a')
    expect(again.name).toBe(a.name)
    const borrowed = await otherLease
    expect(borrowed.name).not.toBe(a.name)
    expect(other.stats).toMatchObject({ created: 1, reused: 0 })
  })

  test('a VM another pool held in between is checked anew: a new connection and `true`', async () => {
    const { provider, counts } = setup()
    const mine = make(provider)
    const other = make(provider)
    const a = await mine.acquire('a')
    await a.release()
    const borrowed = await other.acquire('x')
    expect(borrowed.name).toBe(a.name)
    await borrowed.release()
    const connects = counts.connect
    const execs = counts.exec
    const again = await mine.acquire('a')
    expect(again.name).toBe(a.name)
    expect(counts.connect).toBe(connects + 1)
    expect(counts.exec).toBe(execs + 1)
  })

  test('a kept connection is closed after PARKED_CONNECTION_TTL_MS, and the next adoption connects anew', async () => {
    const { provider, counts } = setup()
    const pool = make(provider)
    await (await pool.acquire('a')).release()
    await new Promise((resolve) => setTimeout(resolve, PARKED_CONNECTION_TTL_MS + 200))
    expect(counts.close).toBe(1)
    await pool.acquire('b')
    expect(counts).toMatchObject({ connect: 2, exec: 1 })
  })

  test('a VM that stopped running while its connection was kept is deleted and replaced', async () => {
    const { provider, counts } = setup()
    const warnings: string[] = []
    const pool = make(provider, { warn: (message) => warnings.push(message) })
    const first = await pool.acquire('a')
    await first.release()
    await provider.delete(first.name)
    const next = await pool.acquire('b')
    expect(next.adopted).toBe(false)
    expect(warnings.join('\n')).toContain(`idle VM ${first.name} failed its check before adoption (its provider says it no longer runs)`)
    expect(counts.close).toBe(1)
  })
})
