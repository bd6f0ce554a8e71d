/**
 * `vm-pool ssh NAME [-- command...]` and `vm-pool rm NAME... [--force]` (the built bin, the fake provider:
 * its "VMs" are sandbox directories, so a shell there is a real process), and the connection data of
 * `ls --json`. The QEMU ssh line is checked in test/unit/qemu-kept-vm-help.test.ts.
 */
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { listVms } from '../../src/pool/vm-listing.js'
import type { VmListingRow } from '../../src/pool/vm-listing.js'
import { killFixtures, makeStateDir, runBin, spawnFixture } from '../../fixtures/pool/harness.js'

const BIN = join(import.meta.dirname, '../../dist/cli/main.js')

describe('vm-pool ssh and rm (the built bin)', () => {
  const state = makeStateDir()
  const env = () => ({ VM_POOL_STATE_DIR: state.dir, VM_POOL_PROVIDER: 'fake' })
  const names = async () => (await fakeProvider({ stateDir: state.dir }).list()).map((info) => info.name).sort()
  afterEach(() => {
    killFixtures()
    state.dispose()
  })

  test('ssh NAME -- command runs it in the VM and exits with its status; without one, a shell reads stdin', async () => {
    await fakeProvider({ stateDir: state.dir }).create({ name: 'test-vm-ssh' })
    const run = runBin(['ssh', 'test-vm-ssh', '--', 'sh', '-c', 'echo "in $VM_POOL_VM at $(pwd)"; echo oops >&2; exit 3'], env())
    expect(run.code, run.stderr).toBe(3)
    expect(run.stdout).toBe(`in test-vm-ssh at ${join(state.dir, 'fake', 'test-vm-ssh', 'home')}\n`)
    expect(run.stderr).toBe('oops\n')
    // No command: the shell (stdio inherited, here a pipe instead of a terminal).
    const shell = spawnSync(process.execPath, [BIN, 'ssh', 'test-vm-ssh'], { env: { ...process.env, ...env(), SHELL: '/bin/sh', NODE_OPTIONS: '' }, input: 'echo "shell in $VM_POOL_VM"\nexit 4\n', encoding: 'utf8' })
    expect(shell.status, shell.stderr).toBe(4)
    expect(shell.stdout).toBe('shell in test-vm-ssh\n')

    const missing = runBin(['ssh', 'test-vm-nope'], env())
    expect(missing.code).toBe(1)
    expect(missing.stderr).toContain('no VM named test-vm-nope')
    expect(runBin(['ssh'], env()).code).toBe(2)
  }, 60_000)

  test('rm deletes exactly the named VMs and their leases; a VM a live process holds only with --force', async () => {
    const holder = spawnFixture('holder.mjs', { stateDir: state.dir, keys: ['a', 'w'], releaseWarm: ['w'], keepWarm: { ttlMs: 600_000, max: 2 }, reaper: false })
    const ready = await holder.message((m) => m.ready === true, 'ready')
    const leases = ready.leases as Record<string, string>
    const provider = fakeProvider({ stateDir: state.dir })
    await provider.create({ name: 'test-vm-kept' })
    await provider.create({ name: 'test-vm-kept-2' })

    // Held by the live holder: refused, untouched.
    const refused = runBin(['rm', leases.a!], env())
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain(`refused  ${leases.a}: held by live process ${holder.pid}`)
    expect(await names()).toContain(leases.a)

    // A kept VM (no lease) and an idle warm one: deleted, and nothing whose name merely starts the same.
    const removed = runBin(['rm', 'test-vm-kept', leases.w!, '--json'], env())
    expect(removed.code, removed.stderr).toBe(0)
    expect(JSON.parse(removed.stdout)).toMatchObject({ deleted: [{ name: 'test-vm-kept' }, { name: leases.w }], refused: [], missing: [], failed: [] })
    expect(await names()).toEqual([leases.a, 'test-vm-kept-2'].sort())
    const table = (await import('../../src/pool/file-lease-store.js')).FileLeaseStore
    expect(Object.keys(await new table({ provider, stateDir: state.dir }).read())).toEqual([leases.a])

    const missing = runBin(['rm', 'test-vm-kept'], env())
    expect(missing.code).toBe(1)
    expect(missing.stderr).toContain('missing  test-vm-kept')

    const forced = runBin(['rm', leases.a!, '--force'], env())
    expect(forced.code, forced.stderr).toBe(0)
    expect(forced.stdout).toContain(`deleted  ${leases.a}  (held by live process ${holder.pid}, deleted with --force)`)
    expect(await names()).toEqual(['test-vm-kept-2'])
    expect(existsSync(join(state.dir, 'fake', leases.a!))).toBe(false)
  }, 60_000)

  test('ls --json says how to connect: the vm-pool ssh line, address, port, user and key path, never more', async () => {
    await fakeProvider({ stateDir: state.dir }).create({ name: 'test-vm-ls' })
    const json = runBin(['ls', '--json'], env())
    const rows = JSON.parse(json.stdout) as VmListingRow[]
    expect(rows.find((row) => row.name === 'test-vm-ls')?.connection).toEqual({ command: 'vm-pool ssh test-vm-ls --provider fake' })

    // A qemu-shaped record: only the plain connection fields come through.
    const fake = fakeProvider({ stateDir: state.dir })
    const record = { name: 'vm-1', provider: 'qemu', createdAt: new Date().toISOString(), spec: { name: 'vm-1' }, data: { host: '127.0.0.1', port: 40022, username: 'root', keyPath: '/state/qemu/vm-1/client_key', hostKey: 'ssh-ed25519 AAAA', pid: 1 } }
    const [row] = await listVms({ provider: { ...fake, name: 'qemu', list: async () => [{ name: 'vm-1', provider: 'qemu', state: 'running', record }] }, stateDir: state.dir })
    expect(row!.connection).toEqual({ command: 'vm-pool ssh vm-1 --provider qemu', host: '127.0.0.1', port: 40022, user: 'root', keyPath: '/state/qemu/vm-1/client_key' })
  }, 60_000)
})
