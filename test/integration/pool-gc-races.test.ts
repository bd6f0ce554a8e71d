/**
 * `collectGarbage` racing real pools in this process (fake provider, one state dir). gc lists VMs before it
 * takes the lease lock; whatever pools do in between must not make it forget or delete a VM someone uses.
 */
import { afterEach, describe, expect, test } from 'vitest'
import { collectGarbage } from '../../src/pool/garbage-collector.js'
import { createPool } from '../../src/pool/vm-pool.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import type { VmProvider } from '../../src/providers/vm-provider.js'
import { getCurrentProcessIdentity } from '../../src/util/process-info.js'
import { makeStateDir } from '../../fixtures/pool/harness.js'

describe('gc racing pools', () => {
  let state: ReturnType<typeof makeStateDir>
  afterEach(() => state.dispose())

  /** The fake provider, but `list()` lets `whileListing` run after the VMs were listed and before gc goes on. */
  const providerListingThen = (whileListing: () => Promise<void>): VmProvider => {
    const fake = fakeProvider({ stateDir: state.dir })
    let armed = true
    return {
      ...fake,
      name: fake.name,
      async list() {
        const infos = await fake.list()
        if (armed) {
          armed = false
          await whileListing()
        }
        return infos
      },
    }
  }

  test('a warm VM created and released while gc runs is neither forgotten nor deleted (issue 11, item 3)', async () => {
    state = makeStateDir()
    let warm = ''
    const provider = providerListingThen(async () => {
      const pool = createPool({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir, reaper: false, keepWarm: { ttlMs: 600_000, max: 4 } })
      const lease = await pool.acquire('late')
      warm = lease.name
      await pool.drain()
    })
    const report = await collectGarbage({ provider, stateDir: state.dir })
    expect(report.forgotten).toEqual([])
    const store = createPool({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir, reaper: false }).store
    expect((await store.read())[warm]).toMatchObject({ state: 'idle', owner: null })

    // The next gc sees it listed, checks it and keeps it; without its lease it would be "no lease" → deleted.
    const next = await collectGarbage({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir })
    expect(next.deleted).toEqual([])
    expect(next.kept).toEqual([expect.objectContaining({ name: warm, reason: expect.stringMatching(/^healthy idle warm VM/) })])
    expect((await fakeProvider({ stateDir: state.dir }).list()).map((info) => info.name)).toEqual([warm])
  })

  test('a VM reserved by a pool after gc listed it: kept as held by a live owner, not deleted as leaseless', async () => {
    state = makeStateDir()
    const fake = fakeProvider({ stateDir: state.dir })
    // Listed without a lease (a stray VM) — then a pool in this (live) process claims its name before gc locks.
    await fake.create({ name: 'vm-pool-wf-race-1' })
    const pool = createPool({ provider: fakeProvider({ stateDir: state.dir }), prefix: 'vm-pool-wf', stateDir: state.dir, reaper: false })
    const provider = providerListingThen(async () => {
      await pool.store.update((table) => {
        const at = new Date().toISOString()
        table['vm-pool-wf-race-1'] = { name: 'vm-pool-wf-race-1', provider: 'fake', specHash: 'x', kind: 'fresh', state: 'booting', owner: getCurrentProcessIdentity(), runId: 'race', createdAt: at, updatedAt: at }
      })
    })
    const report = await collectGarbage({ provider, stateDir: state.dir })
    expect(report.deleted).toEqual([])
    expect(report.kept).toEqual([expect.objectContaining({ name: 'vm-pool-wf-race-1', reason: expect.stringMatching(/^booting by live pid /) })])
    expect((await fake.list()).map((info) => info.name)).toEqual(['vm-pool-wf-race-1'])
    await pool.drain()
  })
})
