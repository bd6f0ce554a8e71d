/** `vm-pool ls`: every VM the provider sees with its lease state, owner and age. */
import { afterEach, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import type { VmListingRow } from '../../src/pool/vm-listing.js'
import { killFixtures, makeStateDir, runBin, spawnFixture } from '../../fixtures/pool/harness.js'

describe('vm-pool ls (the built bin)', () => {
  const state = makeStateDir()
  afterEach(() => {
    killFixtures()
    state.dispose()
  })

  test('shows leased, idle and unleased VMs with owner and liveness', async () => {
    const holder = spawnFixture('holder.mjs', { stateDir: state.dir, keys: ['a', 'w'], releaseWarm: ['w'], keepWarm: { ttlMs: 600_000, max: 2 }, reaper: false })
    const ready = await holder.message((m) => m.ready === true, 'ready')
    const leases = ready.leases as Record<string, string>
    await fakeProvider({ stateDir: state.dir }).create({ name: 'test-vm-stray' })

    const json = runBin(['ls', '--provider', 'fake', '--json'], { VM_POOL_STATE_DIR: state.dir })
    expect(json.code).toBe(0)
    const rows = Object.fromEntries((JSON.parse(json.stdout) as VmListingRow[]).map((row) => [row.name, row]))
    expect(rows[leases.a!]).toMatchObject({ vmState: 'running', lease: 'leased', owner: { pid: holder.pid, alive: true }, runId: ready.runId, key: 'a' })
    expect(rows[leases.w!]).toMatchObject({ vmState: 'running', lease: 'idle', owner: null })
    expect(rows['test-vm-stray']).toMatchObject({ vmState: 'running', lease: null, owner: null })

    holder.child.kill('SIGKILL')
    await holder.exited
    const text = runBin(['ls', '-p', 'fake'], { VM_POOL_STATE_DIR: state.dir })
    expect(text.code).toBe(0)
    expect(text.stdout).toMatch(/^NAME +VM +LEASE +OWNER +RUN +AGE$/m)
    expect(text.stdout).toMatch(new RegExp(`^${leases.a} +running +leased +${holder.pid} \\(dead\\) +${ready.runId} +\\d+s$`, 'm'))
    expect(text.stdout).toMatch(/^test-vm-stray +running +- +- +- +\d+s$/m)
  }, 60_000)

  test('--help explains; an unknown option exits 2', () => {
    const help = runBin(['ls', '--help'], { VM_POOL_STATE_DIR: state.dir })
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('Usage: vm-pool ls [--provider NAME] [--json]')
    expect(help.stdout).toMatch(/lease file in VM_POOL_STATE_DIR, or\s+the PostgreSQL database in VM_POOL_LEASE_STORE/)
    const bad = runBin(['ls', '-p', 'fake', '--bogus'], { VM_POOL_STATE_DIR: state.dir })
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain("Run 'vm-pool ls --help' for usage.")
  })
})
