/**
 * `qemuProvider({ host })` shared by runners on two "hosts" (processes with different VM_POOL_HOST_ID, one
 * file lease store): runner A boots a VM on the VM host (a real sshd on loopback in front of this machine)
 * and releases it warm; runner B adopts it through the same VM host and runs a command in it. B then dies
 * holding it, and its watchdog — started with the same provider options (a key FILE, never key text) —
 * deletes the VM over SSH. The CLI (`warm`, `ls`, `gc --all`) works against the VM host with the key in
 * VM_POOL_VM_HOST_PRIVATE_KEY. The adoption runs again through a PostgreSQL
 * lease store (skipped outside CI when PostgreSQL is missing). Last, nothing written along the way (records,
 * leases in either store, reaper markers and logs, DEBUG output, the CLI's output) holds the VM host's private key.
 */
import { execFile } from 'node:child_process'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import type { QemuProvider } from '../../src/providers/qemu/qemu-provider.js'
import { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import { PostgresLeaseStore } from '../../src/pool/postgres-lease-store.js'
import { getPostgresSkipReason, startPostgres, type StartedPostgres } from '../helpers/postgres.js'
import { BIN, isPidRunning, killFixtures, makeStateDir, spawnFixture, waitFor } from '../../fixtures/pool/harness.js'
import { QEMU_TEST_CREATE_TIMEOUT_MS } from '../helpers/qemu.js'
import { getVmHostSkipReason, startTestVmHost, useVmHostProvider, type TestVmHost } from '../helpers/vm-host.js'
import { uniqueVmName } from '../contract/provider-contract.js'

const skipReason = getVmHostSkipReason()
const postgresSkipReason = skipReason ? undefined : getPostgresSkipReason()

/**
 * The built CLI, run without blocking this process: the sshd playing the VM host logs into a pipe this
 * process reads, and a blocked reader (spawnSync) stalls that sshd once the pipe is full.
 */
function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: { ...process.env, NODE_OPTIONS: '', ...env }, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stdout, stderr })
    })
  })
}

/** Every regular file under `dir` (recursively), as text. */
function readTree(dir: string, skip: (path: string) => boolean = () => false): { path: string; text: string }[] {
  const files: { path: string; text: string }[] = []
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const path = join(entry.parentPath, entry.name)
    if (!entry.isFile() || skip(path) || statSync(path).size > 10_000_000) continue
    files.push({ path, text: readFileSync(path, 'latin1') })
  }
  return files
}

describe.skipIf(Boolean(skipReason))(`qemu on a VM host shared by runners on two hosts${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let vmHost: TestVmHost
  let provider: QemuProvider
  let cleanup: () => Promise<void>
  const state = makeStateDir()
  /** Everything printed by the processes of this file, checked for the private key at the end. */
  const outputs: { what: string; text: string }[] = []
  /** The lease tables as read back from each store, checked too. */
  const leaseDumps: { what: string; text: string }[] = []
  let postgres: StartedPostgres | undefined
  const watchdogs: number[] = []

  beforeAll(async () => {
    vmHost = await startTestVmHost()
    ;({ provider, cleanup } = useVmHostProvider(vmHost))
  }, 60_000)
  afterAll(async () => {
    killFixtures()
    await waitFor(() => watchdogs.every((pid) => !isPidRunning(pid)), 'watchdogs to exit').catch(() => {})
    await cleanup?.()
    await vmHost?.stop()
    postgres?.stop()
    state.dispose()
  }, 120_000)

  /**
   * Runner A (host runner-a) boots a VM on the VM host, writes a file in it and drains, keeping it warm; runner B
   * (host runner-b) adopts it — the same running guest, no boot — and reads A's file. Returns B, still holding it.
   */
  async function shareWarmVm(leaseStore: Record<string, unknown> | undefined, tag: string) {
    const config = { provider: 'qemu', providerOptions: vmHost.options(), stateDir: state.dir, keepWarm: { ttlMs: 600_000, max: 1, reset: false }, ...(leaseStore ? { leaseStore } : {}) }
    const env = (host: string) => ({ env: { VM_POOL_HOST_ID: host, DEBUG: 'vm-pool:*' } })
    const a = spawnFixture('holder.mjs', { ...config, keys: ['a'] }, env('runner-a'))
    const aReady = await a.message((m) => m.ready === true, 'A ready (a TCG boot on the VM host)', QEMU_TEST_CREATE_TIMEOUT_MS)
    watchdogs.push(aReady.reaperPid as number)
    const vmName = (aReady.leases as Record<string, string>).a!
    expect(aReady.stats).toMatchObject({ created: 1 })
    const guestPort = (await provider.list()).find((info) => info.name === vmName)?.record?.data.port
    expect(guestPort).toBeTypeOf('number')
    const write = 'echo from-a > handover.txt && cat /proc/sys/kernel/random/boot_id'
    a.send({ cmd: 'exec', key: 'a', command: write })
    const wrote = await a.message((m) => m.exec === write, 'A exec')
    expect(wrote.exitCode, String(wrote.stderr)).toBe(0)
    const bootId = String(wrote.stdout).trim()
    a.send({ cmd: 'drain' })
    const drained = await a.message((m) => m.drained === true, 'A drained', 60_000)
    expect((drained.result as { keptWarm: string[] }).keptWarm).toEqual([vmName])
    await a.exited
    outputs.push({ what: `runner A stderr (${tag})`, text: a.stderr() })
    // The VM runs on the VM host: its dir is in the host state dir.
    expect(readdirSync(join(vmHost.hostStateDir, 'qemu'))).toContain(vmName)

    const b = spawnFixture('holder.mjs', { ...config, keys: ['b'] }, env('runner-b'))
    const bReady = await b.message((m) => m.ready === true, 'B ready', QEMU_TEST_CREATE_TIMEOUT_MS)
    watchdogs.push(bReady.reaperPid as number)
    expect(bReady.leases).toEqual({ b: vmName })
    expect(bReady.adopted).toEqual({ b: true })
    expect(bReady.stats).toMatchObject({ created: 0, reused: 1 })
    const read = 'cat handover.txt /proc/sys/kernel/random/boot_id'
    b.send({ cmd: 'exec', key: 'b', command: read })
    const got = await b.message((m) => m.exec === read, 'B exec')
    expect(String(got.stdout).trim().split('\n')).toEqual(['from-a', bootId])
    // The guest's SSH was reached through the VM host's sshd (a direct-tcpip channel to its loopback port).
    expect(vmHost.sshd.log()).toContain(`target 127.0.0.1 port ${guestPort}`)
    return { b, vmName }
  }

  test('B adopts the warm VM A booted, through the same VM host; B dies holding it and its watchdog deletes it there', async () => {
    const { b, vmName } = await shareWarmVm(undefined, 'file store')
    const store = new FileLeaseStore({ provider, stateDir: state.dir })
    expect((await store.read())[vmName]).toMatchObject({ state: 'leased', owner: { host: 'runner-b' } })
    leaseDumps.push({ what: 'file lease store', text: JSON.stringify(await store.read()) })

    // B exits without draining: its watchdog recreates qemuProvider({ host, privateKeyFile }) and deletes the VM on the VM host.
    b.send({ cmd: 'exit' })
    await b.exited
    outputs.push({ what: 'runner B stderr (file store)', text: b.stderr() })
    await waitFor(async () => !(await provider.list()).some((info) => info.name === vmName), `B's watchdog to delete ${vmName} on the VM host`, 120_000)
    expect(readdirSync(join(vmHost.hostStateDir, 'qemu'))).not.toContain(vmName)
  }, 2 * QEMU_TEST_CREATE_TIMEOUT_MS + 180_000)

  test.skipIf(Boolean(postgresSkipReason))(`the same through a PostgreSQL lease store${postgresSkipReason ? ` (skipped: ${postgresSkipReason})` : ''}`, async () => {
    postgres = await startPostgres()
    const connectionString = await postgres.createDatabase('vm_host_hosts')
    const { b, vmName } = await shareWarmVm({ kind: 'postgres', connectionString, namespace: 'qemu' }, 'postgres')
    const store = new PostgresLeaseStore({ connectionString, namespace: 'qemu' })
    try {
      const table = await store.read()
      expect(table[vmName]).toMatchObject({ state: 'leased', owner: { host: 'runner-b' } })
      leaseDumps.push({ what: 'postgres lease store', text: JSON.stringify(table) })
    } finally {
      await store.close()
    }
    b.send({ cmd: 'drain' })
    await b.message((m) => m.drained === true, 'B drained', 60_000)
    outputs.push({ what: 'runner B stderr (postgres)', text: b.stderr() })
    await provider.delete(vmName)
  }, 2 * QEMU_TEST_CREATE_TIMEOUT_MS + 180_000)

  test('the CLI against the VM host, key from VM_POOL_VM_HOST_PRIVATE_KEY: warm boots there, ls lists it, gc --all deletes it and a VM no lease knows', async () => {
    // What `vm-pool doctor` shows: the VM host, its image and accelerator (KVM only if a test boot there proves it).
    const probe = await provider.probe()
    expect(probe, probe.reason).toMatchObject({ usable: true, details: { vmHost: `${vmHost.sshd.user}@127.0.0.1:${vmHost.sshd.port}`, stateDir: join(vmHost.hostStateDir, 'qemu') } })
    expect(['kvm', 'tcg']).toContain(probe.details?.accel)
    // As docs/github-actions.md has it: the options name the host without its key; the key is in the environment.
    const { privateKeyFile: _file, ...withoutKey } = vmHost.options()
    const env = { VM_POOL_STATE_DIR: state.dir, VM_POOL_PROVIDER_OPTIONS: JSON.stringify(withoutKey), VM_POOL_VM_HOST_PRIVATE_KEY: vmHost.sshd.clientKey.privateKey, DEBUG: 'vm-pool:*' }
    const warm = await runCli(['warm', '--provider', 'qemu', '--count', '1', '--json'], env)
    outputs.push({ what: 'warm stdout', text: warm.stdout }, { what: 'warm stderr', text: warm.stderr })
    expect(warm.code, warm.stderr).toBe(0)
    const ls = await runCli(['ls', '--provider', 'qemu', '--json'], env)
    outputs.push({ what: 'ls stdout', text: ls.stdout })
    expect(ls.code, ls.stderr).toBe(0)
    const warmed = (await provider.list()).filter((info) => info.name.startsWith('vitest-worker-'))
    expect(warmed).toHaveLength(1)
    expect(ls.stdout).toContain(warmed[0]!.name)

    // QEMU's own forward would listen on the VM host, not here: refused, with the SSH forward as the way.
    const vm = await provider.connect(warmed[0]!.record!)
    expect((await vm.exec('echo warm')).stdout).toBe('warm\n')
    await expect(vm.forwardPort(8080, { via: 'hostfwd' })).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_UNSUPPORTED') && /leave out `via`/.test(error.hint ?? ''))
    await vm.close()

    const stray = uniqueVmName('test-vm-gc')
    await provider.create({ name: stray })
    const gc = await runCli(['gc', '--provider', 'qemu', '--all', '--json'], env)
    outputs.push({ what: 'gc stdout', text: gc.stdout }, { what: 'gc stderr', text: gc.stderr })
    expect(gc.code, gc.stderr).toBe(0)
    expect((JSON.parse(gc.stdout) as { deleted: { name: string }[] }).deleted.map((decision) => decision.name).sort()).toEqual([stray, warmed[0]!.name].sort())
    expect((await provider.list()).map((info) => info.name)).toEqual([])
  }, 2 * QEMU_TEST_CREATE_TIMEOUT_MS + 60_000)

  test('no record, lease, reaper marker or log line holds the VM host private key', () => {
    const key = vmHost.sshd.clientKey.privateKey
    // Any line of the key's base64 body gives the key away; the header alone does not.
    const bodyLines = key.split('\n').filter((line) => line.length >= 20 && !line.startsWith('-----'))
    expect(bodyLines.length).toBeGreaterThan(0)
    // The guest's own key lives in its VM dir (client_key) as it does for local VMs; everything else is checked.
    const written = [...readTree(state.dir), ...readTree(vmHost.hostStateDir, (path) => path.endsWith('/client_key'))]
    expect(written.some((file) => file.path.includes('leases'))).toBe(true)
    expect(written.some((file) => file.path.includes('reaper'))).toBe(true)
    expect(outputs.length).toBeGreaterThanOrEqual(6)
    expect(outputs.every((output) => output.text.length > 0)).toBe(true)
    expect(leaseDumps.length).toBeGreaterThanOrEqual(1)
    for (const { what, text } of [...written.map((file) => ({ what: file.path, text: file.text })), ...outputs, ...leaseDumps]) {
      for (const line of bodyLines) expect(text.includes(line), `${what} holds a line of the private key`).toBe(false)
    }
  })
})
