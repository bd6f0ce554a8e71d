/**
 * Snapshot-restored QEMU VMs (`snapshot: 'auto'`, the default) on their own snapshot dir: the first
 * creates (one here, one in another process at the same time) share one template boot; restored VMs
 * are independent of each other and of the snapshot, answer exec with their own identity, reset to
 * the snapshot, and are deleted cleanly; a restore that only ran out of time keeps the snapshot; a
 * snapshot with a foreign key or a corrupt state file is rebuilt, never used. QEMU time: three template boots (first build + two rebuilds) and a few restores.
 * (The shared provider contract already runs on restored VMs: test/contract/qemu-provider.test.ts uses the default.)
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest'
import { ensureDistBuilt } from '../../fixtures/pool/harness.js'
import { isVmPoolError } from '../../src/errors.js'
import type { QemuVm } from '../../src/providers/qemu/qemu-vm.js'
import { SNAPSHOT_MANIFEST_FILE } from '../../src/providers/qemu/qemu-snapshot.js'
import type { VmRecord } from '../../src/providers/vm-provider.js'
// Zombie-aware: a killed, daemonized QEMU may stay a zombie where PID 1 does not reap.
import { isPidAlive } from '../../src/util/process-info.js'
import { getQemuSkipReason, QEMU_TEST_CREATE_TIMEOUT_MS, qemuPidsFor, useQemuTestProvider, type QemuTestProvider } from '../helpers/qemu.js'
import { childEnded } from '../helpers/child-ended.js'

const skipReason = getQemuSkipReason()
/** A first create waits for a template boot (or for the other process's) and then restores. */
const FIRST_CREATE_TIMEOUT_MS = 2 * QEMU_TEST_CREATE_TIMEOUT_MS

describe.skipIf(Boolean(skipReason))('qemu snapshot restore', () => {
  const snapshotDir = mkdtempSync(join(tmpdir(), 'vmp-snap-'))
  let qemu: QemuTestProvider
  const vms = new Map<string, QemuVm>()
  const records = new Map<string, VmRecord>()

  /** The slot dir the provider made (one machine shape in this file). */
  const slotDir = () => {
    const slots = readdirSync(snapshotDir, { withFileTypes: true }).filter((entry) => entry.isDirectory())
    expect(slots).toHaveLength(1)
    return join(snapshotDir, slots[0]!.name)
  }
  const manifest = () => JSON.parse(readFileSync(join(slotDir(), SNAPSHOT_MANIFEST_FILE), 'utf8')) as { id: string; key: string; stateFile: string; stateBytes: number }
  const stateFiles = () => readdirSync(slotDir()).filter((file) => file.startsWith('state-'))

  async function create(name: string): Promise<QemuVm> {
    const record = await qemu.provider.create({ name })
    records.set(name, record)
    const vm = await qemu.provider.connect(record)
    vms.set(name, vm)
    return vm
  }

  /** A create in another process with the same state and snapshot dirs (the built dist/, as a user runs it). */
  function createInChild(name: string, stderrOut?: { text: string }): Promise<VmRecord> {
    const script = `
      import { qemuProvider } from ${JSON.stringify(join(process.cwd(), 'dist/index.js'))}
      const provider = qemuProvider({ stateDir: process.argv[1], snapshotDir: process.argv[2] })
      const record = await provider.create({ name: process.argv[3] })
      await provider.close()
      process.stdout.write(JSON.stringify(record))`
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['--input-type=module', '-e', script, qemu.stateDir, snapshotDir, name], { stdio: ['ignore', 'pipe', 'pipe'] })
      let stdout = ''
      let stderr = ''
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
      void childEnded(child).then(({ code }) => {
        if (stderrOut) stderrOut.text = stderr
        return code === 0 ? resolve(JSON.parse(stdout) as VmRecord) : reject(new Error(`child create exited with ${code}: ${stderr}`))
      })
    })
  }

  beforeAll(async () => {
    await ensureDistBuilt()
    qemu = useQemuTestProvider({ snapshotDir })
  }, 120_000)

  afterAll(async () => {
    for (const vm of vms.values()) await vm.close().catch(() => {})
    // Deletes every VM in the state dir, the child's included, even after failures.
    await qemu?.cleanup()
    rmSync(snapshotDir, { recursive: true, force: true })
  }, 60_000)

  test('two concurrent first creates (two processes) boot one template and restore from the same snapshot', async () => {
    // The one process that builds the snapshot says so, once (a slow first create must not look hung).
    const childStderr = { text: '' }
    const parentStderr: string[] = []
    const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => (parentStderr.push(String(chunk)), true))
    const [child] = await Promise.all([createInChild('snap-child', childStderr), create('snap-a')]).finally(() => spy.mockRestore())
    const progress = [...childStderr.text.split('\n'), ...parentStderr.join('').split('\n')].filter((line) => line.includes('building a snapshot for a new machine shape'))
    expect(progress).toHaveLength(1)
    expect(progress[0]).toMatch(/^vm-pool: \[qemu\] building a snapshot for a new machine shape \(.+, 1 cpu, \d+ MiB, (tcg|kvm)\): once, about 10 s and ~90 MB in /)
    records.set('snap-child', child)
    const a = records.get('snap-a')!
    expect(a.data.restoredFrom).toMatch(/^[0-9a-f]{16}$/)
    expect(child.data.restoredFrom).toBe(a.data.restoredFrom)
    expect(manifest().id).toBe(a.data.restoredFrom)
    expect(stateFiles()).toEqual([manifest().stateFile])
    expect(existsSync(join(slotDir(), 'template'))).toBe(false)
    expect(a.data.bootMs).toEqual(expect.any(Number))
    expect(child.data.port).not.toBe(a.data.port)
  }, FIRST_CREATE_TIMEOUT_MS)

  test('restored VMs are independent: own files, hostname, clock, randomness; the snapshot keeps none of it', async () => {
    const a = vms.get('snap-a')!
    const child = await qemu.provider.connect(records.get('snap-child')!)
    vms.set('snap-child', child)
    expect((await a.exec('echo from-a > /root/mine && cat /root/mine')).stdout).toBe('from-a\n')
    expect((await child.exec('ls /root/mine')).exitCode).not.toBe(0)
    const base = await create('snap-base')
    expect((await base.exec('ls /root/mine')).exitCode).not.toBe(0)
    expect(records.get('snap-base')!.data.restoredFrom).toBe(records.get('snap-a')!.data.restoredFrom)

    const facts = async (vm: QemuVm) => (await vm.exec('hostname; date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"')).stdout.split('\n')
    const seen = await Promise.all([a, child, base].map(facts))
    expect(seen.map((lines) => lines[0])).toEqual(['snap-a', 'snap-child', 'snap-base'])
    // The template's clock stopped when it was saved: each clone is set to the host's time.
    for (const lines of seen) expect(Math.abs(Number(lines[1]) - Date.now() / 1000)).toBeLessThan(120)
    expect(new Set(seen.map((lines) => lines[2])).size).toBe(3)
  }, QEMU_TEST_CREATE_TIMEOUT_MS)

  test('reset puts a VM back to the snapshot: files written before are gone, the name stays, exec works', async () => {
    const vm = vms.get('snap-base')!
    await vm.exec('touch /root/dirty /tmp/dirty')
    await vm.close()
    vms.delete('snap-base')
    const oldPid = records.get('snap-base')!.data.pid as number
    const record = await qemu.provider.reset!('snap-base')
    records.set('snap-base', record)
    expect(record.name).toBe('snap-base')
    expect(record.data.restoredFrom).toBe(manifest().id)
    expect(isPidAlive(oldPid)).toBe(false)
    const again = await qemu.provider.connect(record)
    vms.set('snap-base', again)
    expect((await again.exec('ls /root/dirty /tmp/dirty; hostname')).stdout).toBe('snap-base\n')
    expect((await qemu.provider.list()).find((info) => info.name === 'snap-base')?.state).toBe('running')
  }, QEMU_TEST_CREATE_TIMEOUT_MS)

  test('delete leaves no process and no state dir', async () => {
    for (const name of ['snap-a', 'snap-child']) {
      await vms.get(name)?.close()
      vms.delete(name)
      const pid = records.get(name)!.data.pid as number
      expect(isPidAlive(pid)).toBe(true)
      await qemu.provider.delete(name)
      expect(isPidAlive(pid)).toBe(false)
      expect(existsSync(join(qemu.stateDir, 'qemu', name))).toBe(false)
    }
    expect((await qemu.provider.list()).map((info) => info.name)).toEqual(['snap-base'])
  }, 60_000)

  test('a restore that runs out of time (a busy machine) fails with VMPOOL_BOOT_TIMEOUT and keeps the snapshot: the next create restores from it', async () => {
    const before = manifest()
    // 50 ms: no restore finishes in that time, so the restore itself times out, as a slow one on a busy CI machine does.
    const impatient = useQemuTestProvider({ snapshotDir, bootTimeoutMs: 50 })
    try {
      const error = await impatient.provider.create({ name: 'snap-impatient' }).catch((e: unknown) => e)
      expect(isVmPoolError(error, 'VMPOOL_BOOT_TIMEOUT'), String(error)).toBe(true)
      expect(await impatient.provider.list()).toEqual([])
      expect(qemuPidsFor('snap-impatient')).toEqual([])
    } finally {
      await impatient.cleanup()
    }
    expect(manifest()).toEqual(before)
    expect(stateFiles()).toEqual([before.stateFile])
    const vm = await create('snap-after-timeout')
    expect(records.get('snap-after-timeout')!.data.restoredFrom).toBe(before.id)
    expect((await vm.exec('hostname')).stdout).toBe('snap-after-timeout\n')
  }, QEMU_TEST_CREATE_TIMEOUT_MS)

  test('a snapshot whose key does not match (another image or machine) is deleted and rebuilt, not used', async () => {
    const old = manifest()
    writeFileSync(join(slotDir(), SNAPSHOT_MANIFEST_FILE), JSON.stringify({ ...old, key: 'f'.repeat(64) }))
    expect((await qemu.provider.probe()).details?.snapshot).toMatch(/^stale .*made for another machine or image/)
    const vm = await create('snap-rekeyed')
    const record = records.get('snap-rekeyed')!
    expect(record.data.restoredFrom).not.toBe(old.id)
    expect(manifest()).toMatchObject({ id: record.data.restoredFrom, key: old.key })
    expect(stateFiles()).toEqual([manifest().stateFile])
    expect((await vm.exec('hostname')).stdout).toBe('snap-rekeyed\n')
    expect((await qemu.provider.probe()).details?.snapshot).toMatch(/^ready in /)
  }, FIRST_CREATE_TIMEOUT_MS)

  test('a corrupt state file (right size, garbage inside) fails to load, is deleted and rebuilt, and the create still succeeds', async () => {
    const old = manifest()
    const stateFile = join(slotDir(), old.stateFile)
    const size = statSync(stateFile).size
    writeFileSync(stateFile, Buffer.alloc(size, 0x5a))
    const vm = await create('snap-after-corrupt')
    const record = records.get('snap-after-corrupt')!
    expect(record.data.restoredFrom).not.toBe(old.id)
    expect(manifest().id).toBe(record.data.restoredFrom)
    expect(stateFiles()).toEqual([manifest().stateFile])
    expect((await vm.exec('echo ok')).stdout).toBe('ok\n')
  }, FIRST_CREATE_TIMEOUT_MS)
})
