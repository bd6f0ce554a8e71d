/**
 * The detached watchdog: a holder process that dies without drain() — SIGKILL, or SIGINT to its whole
 * process group — has its leased and fresh VMs deleted within seconds; its healthy idle warm VM stays.
 * A holder that drains stops its watchdog.
 */
import { existsSync } from 'node:fs'
import { afterEach, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import { isPidRunning, killFixtures, makeStateDir, spawnFixture, waitFor } from '../../fixtures/pool/harness.js'

interface Ready {
  pid: number
  reaperPid: number
  runId: string
  leases: Record<string, string>
  fresh: string[]
}

describe('reaper watchdog', () => {
  let state: ReturnType<typeof makeStateDir>
  const watchdogs: number[] = []
  afterEach(async () => {
    killFixtures()
    // Watchdogs exit once their owner is gone; wait for them before removing their state dir.
    await waitFor(() => watchdogs.every((pid) => !isPidRunning(pid)), 'watchdogs to exit').finally(() => {
      watchdogs.length = 0
      state.dispose()
    })
  })

  const startHolder = async (options: { detached?: boolean; reaper?: 'derived' } = {}) => {
    state = makeStateDir()
    const holder = spawnFixture(
      'holder.mjs',
      { stateDir: state.dir, keys: ['a', 'b', 'w'], fresh: 1, releaseWarm: ['w'], keepWarm: { ttlMs: 600_000, max: 4 }, ...(options.reaper ? { reaper: options.reaper } : {}) },
      { detached: options.detached ?? false },
    )
    const ready = (await holder.message((m) => m.ready === true, 'ready')) as unknown as Ready
    watchdogs.push(ready.reaperPid)
    const provider = fakeProvider({ stateDir: state.dir })
    const names = async () => (await provider.list()).map((info) => info.name)
    const held = [ready.leases.a!, ready.leases.b!, ...ready.fresh]
    expect(await names()).toEqual(expect.arrayContaining([...held, ready.leases.w!]))
    expect(isPidRunning(ready.reaperPid)).toBe(true)
    return { holder, ready, provider, names, held, warm: ready.leases.w! }
  }

  const expectReaped = async (setup: Awaited<ReturnType<typeof startHolder>>) => {
    const { names, held, warm, ready, provider } = setup
    await waitFor(async () => (await names()).every((name) => !held.includes(name)), `the watchdog to delete ${held.join(', ')}`)
    await waitFor(() => !isPidRunning(ready.reaperPid), 'the watchdog to exit after reaping')
    // The warm idle VM belongs to nobody: it stays, still idle and adoptable.
    expect(await names()).toEqual([warm])
    const table = await new FileLeaseStore({ provider, stateDir: state.dir }).read()
    expect(Object.keys(table)).toEqual([warm])
    expect(table[warm]!.state).toBe('idle')
  }

  test('a SIGKILLed holder: its leased and fresh VMs are deleted, its warm idle VM stays', async () => {
    const setup = await startHolder()
    setup.holder.child.kill('SIGKILL')
    await setup.holder.exited
    await expectReaped(setup)
  }, 60_000)

  test('SIGINT to the holder\'s whole process group: same, the watchdog is in its own group', async () => {
    const setup = await startHolder({ detached: true })
    // detached: the holder leads its own group, like `vitest run` in a terminal receiving Ctrl-C.
    process.kill(-setup.holder.pid, 'SIGINT')
    const { signal } = await setup.holder.exited
    expect(signal).toBe('SIGINT')
    await expectReaped(setup)
  }, 60_000)

  test('reaper: true derives the provider (name + the pool\'s stateDir) and reaps the same way', async () => {
    const setup = await startHolder({ reaper: 'derived' })
    setup.holder.child.kill('SIGKILL')
    await setup.holder.exited
    await expectReaped(setup)
  }, 60_000)

  test('a holder that exits without drain() is reaped too', async () => {
    const setup = await startHolder()
    setup.holder.send({ cmd: 'exit' })
    await setup.holder.exited
    await expectReaped(setup)
  }, 60_000)

  test('drain() hands back, deletes fresh VMs and stops the watchdog', async () => {
    const { holder, ready, names } = await startHolder()
    holder.send({ cmd: 'drain' })
    const drained = await holder.message((m) => m.drained === true, 'drained')
    await holder.exited
    await waitFor(() => !isPidRunning(ready.reaperPid), 'the watchdog to exit after drain')
    // keepWarm: leases went back idle, the fresh VM is gone, nothing leaked.
    expect((await names()).sort()).toEqual([ready.leases.a!, ready.leases.b!, ready.leases.w!].sort())
    expect((drained.result as { leaked: string[] }).leaked).toEqual([])
    expect(existsSync(`${state.dir}/reapers/${ready.runId}-${ready.pid}.json`)).toBe(false)
  }, 60_000)
})
