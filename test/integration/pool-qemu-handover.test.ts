/**
 * Warm hand-over with a real QEMU VM: process A acquires, writes a file, releases warm and exits;
 * process B adopts the same running VM (same boot id, A's file still there) without booting. One VM.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { getQemuSkipReason, QEMU_TEST_CREATE_TIMEOUT_MS, useQemuTestProvider, type QemuTestProvider } from '../helpers/qemu.js'
import { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import { isPidRunning, killFixtures, spawnFixture, waitFor } from '../../fixtures/pool/harness.js'

const skipReason = getQemuSkipReason()

describe.skipIf(Boolean(skipReason))('warm hand-over between processes on real QEMU', () => {
  let qemu: QemuTestProvider
  const watchdogs: number[] = []
  beforeAll(async () => {
    qemu = useQemuTestProvider()
  }, 120_000)
  afterAll(async () => {
    killFixtures()
    await waitFor(() => watchdogs.every((pid) => !isPidRunning(pid)), 'watchdogs to exit').catch(() => {})
    await qemu?.cleanup()
  }, 60_000)

  test('B adopts the VM A released warm', async () => {
    const config = { provider: 'qemu', stateDir: qemu.stateDir, keepWarm: { ttlMs: 600_000, max: 1 } }
    const a = spawnFixture('holder.mjs', { ...config, keys: ['a'] })
    const aReady = await a.message((m) => m.ready === true, 'A ready (a TCG boot)', QEMU_TEST_CREATE_TIMEOUT_MS)
    watchdogs.push(aReady.reaperPid as number)
    const vmName = (aReady.leases as Record<string, string>).a!
    expect(aReady.stats).toMatchObject({ created: 1 })
    const write = 'echo from-a > handover.txt && cat /proc/sys/kernel/random/boot_id'
    a.send({ cmd: 'exec', key: 'a', command: write })
    const wrote = await a.message((m) => m.exec === write, 'A exec')
    expect(wrote.exitCode, String(wrote.stderr)).toBe(0)
    const bootId = String(wrote.stdout).trim()
    a.send({ cmd: 'drain' })
    const drained = await a.message((m) => m.drained === true, 'A drained', 60_000)
    expect((drained.result as { keptWarm: string[] }).keptWarm).toEqual([vmName])
    await a.exited

    const table = await new FileLeaseStore({ provider: qemu.provider, stateDir: qemu.stateDir }).read()
    expect(table[vmName]).toMatchObject({ state: 'idle', owner: null })

    const b = spawnFixture('holder.mjs', { ...config, keys: ['b'] })
    const bReady = await b.message((m) => m.ready === true, 'B ready', QEMU_TEST_CREATE_TIMEOUT_MS)
    watchdogs.push(bReady.reaperPid as number)
    expect(bReady.leases).toEqual({ b: vmName })
    expect(bReady.adopted).toEqual({ b: true })
    expect(bReady.stats).toMatchObject({ created: 0, reused: 1 })
    const read = 'cat handover.txt /proc/sys/kernel/random/boot_id'
    b.send({ cmd: 'exec', key: 'b', command: read })
    const got = await b.message((m) => m.exec === read, 'B exec')
    expect(String(got.stdout).trim().split('\n')).toEqual(['from-a', bootId])
    b.send({ cmd: 'drain' })
    await b.message((m) => m.drained === true, 'B drained', 60_000)
    expect((await qemu.provider.list()).map((info) => info.name)).toEqual([vmName])
  }, QEMU_TEST_CREATE_TIMEOUT_MS + 120_000)
})
