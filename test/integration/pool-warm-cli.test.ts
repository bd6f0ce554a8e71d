/** `vm-pool warm` boots idle VMs that a later pool in another process adopts instead of booting. */
import { afterEach, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { killFixtures, makeStateDir, runBin, spawnFixture } from '../../fixtures/pool/harness.js'

describe('vm-pool warm → createPool({ keepWarm }) adopts', () => {
  const state = makeStateDir()
  afterEach(() => {
    killFixtures()
    state.dispose()
  })

  test('warm --count 2, then --count 3 tops up; a pool with the same spec adopts them, another spec does not', async () => {
    const env = { VM_POOL_STATE_DIR: state.dir }
    const first = runBin(['warm', '--count', '2', '--provider', 'fake', '--ttl', '10m', '--json'], env)
    expect(first.code, first.stderr).toBe(0)
    expect(JSON.parse(first.stdout)).toMatchObject({ booted: 2, alreadyWarm: 0 })
    const second = runBin(['warm', '--count', '3', '-p', 'fake'], env)
    expect(second.code, second.stderr).toBe(0)
    expect(second.stderr).toContain('3 idle VM(s) (1 booted, 2 already warm)')
    const warm = second.stdout.trim().split('\n').sort()
    expect(warm).toHaveLength(3)
    expect((await fakeProvider({ stateDir: state.dir }).list()).map((info) => info.name).sort()).toEqual(warm)

    const other = spawnFixture('holder.mjs', { stateDir: state.dir, keys: ['x'], keepWarm: { ttlMs: 60_000, max: 4 }, spec: { cpus: 2 }, reaper: false })
    const otherReady = await other.message((m) => m.ready === true, 'ready')
    expect(otherReady.adopted).toEqual({ x: false })

    const same = spawnFixture('holder.mjs', { stateDir: state.dir, keys: ['a', 'b'], keepWarm: { ttlMs: 60_000, max: 4 }, reaper: false })
    const ready = await same.message((m) => m.ready === true, 'ready')
    expect(ready.adopted).toEqual({ a: true, b: true })
    expect(ready.stats).toMatchObject({ created: 0, reused: 2 })
    expect(warm).toEqual(expect.arrayContaining(Object.values(ready.leases as Record<string, string>)))
  }, 60_000)

  test('--count is required; --help explains', () => {
    const missing = runBin(['warm', '-p', 'fake'], { VM_POOL_STATE_DIR: state.dir })
    expect(missing.code).toBe(2)
    expect(missing.stderr).toContain('--count N is required')
    const help = runBin(['warm', '--help'], {})
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('Usage: vm-pool warm --count N')
  })
})
