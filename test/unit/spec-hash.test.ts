/**
 * The spec hash decides which idle VM a pool may adopt: it covers the spec AND what the provider's options
 * make of it (`VmProvider.fingerprint`), so a warm VM booted with 4 CPUs / 8 GB / ubuntu-24.04 is never handed
 * to a pool set to 1 CPU / 1 GB / ubuntu-22.04. Real pools and fake-provider VMs in a temp state dir.
 */
import { afterEach, describe, expect, test } from 'vitest'
import { countingProvider } from '../../src/providers/counting-provider.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { qemuProvider } from '../../src/providers/qemu/qemu-provider.js'
import type { VmProvider } from '../../src/providers/vm-provider.js'
import { getSpecHash } from '../../src/pool/spec-hash.js'
import { createPool, type VmPool } from '../../src/pool/vm-pool.js'
import { makeStateDir } from '../../fixtures/pool/harness.js'

describe('getSpecHash', () => {
  test('qemu: provider options count, with the defaults applied', () => {
    const big = qemuProvider({ cpus: 4, memoryMiB: 8192, image: 'ubuntu-24.04', imageDir: '/images' })
    const small = qemuProvider({ cpus: 1, memoryMiB: 1024, image: 'ubuntu-22.04', imageDir: '/images' })
    expect(getSpecHash({}, big)).not.toBe(getSpecHash({}, small))
    for (const [a, b] of [
      [{ cpus: 4 }, { cpus: 1 }],
      [{ memoryMiB: 8192 }, { memoryMiB: 1024 }],
      [{ image: 'ubuntu-24.04' }, { image: 'ubuntu-22.04' }],
      [{ imageDir: '/a' }, { imageDir: '/b' }],
    ]) {
      expect(getSpecHash({}, qemuProvider({ imageDir: '/images', ...a }))).not.toBe(getSpecHash({}, qemuProvider({ imageDir: '/images', ...b })))
    }
    // The defaults made explicit: the same VM.
    expect(getSpecHash({}, qemuProvider({ imageDir: '/images' }))).toBe(getSpecHash({}, qemuProvider({ imageDir: '/images', cpus: 1, memoryMiB: 256, image: 'minimal' })))
    // The spec still counts, over the options: a pool asking for 4 CPUs does not get a 1-CPU VM.
    expect(getSpecHash({ cpus: 4 }, qemuProvider({ imageDir: '/images' }))).not.toBe(getSpecHash({}, qemuProvider({ imageDir: '/images' })))
  })

  test('a provider without a fingerprint hashes the spec alone, as before', () => {
    const fake = fakeProvider({ stateDir: '/nowhere' })
    expect(getSpecHash({ cpus: 2 }, fake)).toBe(getSpecHash({ cpus: 2 }))
    expect(getSpecHash({ cpus: 2, image: undefined })).toBe(getSpecHash({ cpus: 2 }))
  })
})

describe('warm VMs are adopted only by pools whose provider options agree', () => {
  let state: ReturnType<typeof makeStateDir>
  const pools: VmPool[] = []
  afterEach(async () => {
    for (const pool of pools.splice(0)) await pool.drain().catch(() => {})
    state?.dispose()
  })

  test('an idle VM of a "4 CPU" provider is not adopted by a "1 CPU" pool, and is by another "4 CPU" one', async () => {
    state = makeStateDir()
    const inner = fakeProvider({ stateDir: state.dir })
    // The real fake provider, plus a fingerprint as a provider with options would have (qemu's cpus/memory/image).
    const withOptions = (cpus: number): VmProvider => countingProvider({ ...inner, fingerprint: (spec) => ({ cpus: spec.cpus ?? cpus }) })
    const keepWarm = { ttlMs: 600_000, max: 2 }
    const make = (provider: VmProvider) => {
      const pool = createPool({ provider, stateDir: state.dir, reaper: false, keepWarm })
      pools.push(pool)
      return pool
    }

    const warmer = make(withOptions(4))
    const warm = await warmer.acquire('a')
    await warm.release()
    expect((await warmer.store.read())[warm.name]).toMatchObject({ state: 'idle' })

    const other = make(withOptions(1))
    const own = await other.acquire('b')
    expect(own.adopted).toBe(false)
    expect(own.name).not.toBe(warm.name)
    expect(other.stats).toMatchObject({ created: 1, reused: 0 })

    const same = make(withOptions(4))
    const adopted = await same.acquire('c')
    expect(adopted).toMatchObject({ name: warm.name, adopted: true })
    expect(same.stats).toMatchObject({ created: 0, reused: 1 })
  })
})
