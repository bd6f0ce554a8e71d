/**
 * Snapshots on a VM host (a real sshd on loopback in front of this machine): two creates at once on a new
 * machine shape build ONE snapshot there (the slot lock on the host) and both restore from it; `reset`
 * puts a VM back to that snapshot (its files gone, same name, same port); a snapshot whose saved state
 * is corrupt is proven broken by the restore, deleted and rebuilt once; a rebuilt image rebuilds the
 * snapshot in its slot (nothing piles up on the host); `snapshot: false` cold-boots.
 */
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import type { QemuProvider } from '../../src/providers/qemu/qemu-provider.js'
import { getImageDir } from '../../src/providers/qemu/qemu-image.js'
import { QEMU_TEST_CREATE_TIMEOUT_MS } from '../helpers/qemu.js'
import { getVmHostSkipReason, startTestVmHost, useVmHostProvider, type TestVmHost } from '../helpers/vm-host.js'
import { uniqueVmName } from '../contract/provider-contract.js'

const skipReason = getVmHostSkipReason()

describe.skipIf(Boolean(skipReason))(`qemu on a VM host: snapshots${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let vmHost: TestVmHost
  let provider: QemuProvider
  const cleanups: (() => Promise<void>)[] = []

  beforeAll(async () => {
    vmHost = await startTestVmHost()
    const used = useVmHostProvider(vmHost)
    provider = used.provider
    cleanups.push(used.cleanup)
  }, 60_000)
  afterAll(async () => {
    for (const cleanup of cleanups) await cleanup()
    await vmHost?.stop()
  }, 120_000)

  const slots = () => readdirSync(join(vmHost.hostStateDir, 'qemu-snapshots')).filter((entry) => !entry.endsWith('.lock'))

  test('two creates at once build one snapshot on the VM host and both restore from it; reset puts a VM back to it', async () => {
    const [a, b] = await Promise.all([provider.create({ name: uniqueVmName() }), provider.create({ name: uniqueVmName() })])
    expect(a.data.restoredFrom).toBeTypeOf('string')
    expect(b.data.restoredFrom).toBe(a.data.restoredFrom)
    expect(slots()).toHaveLength(1)

    const vm = await provider.connect(a)
    expect((await vm.exec('echo dirty > reset-marker && hostname')).stdout.trim()).toBe(a.name)
    await vm.close()
    const next = await provider.reset!(a.name)
    expect(next).toMatchObject({ name: a.name, data: { restoredFrom: a.data.restoredFrom, port: a.data.port } })
    const again = await provider.connect(next)
    const after = await again.exec('test -e reset-marker && echo kept || echo gone; hostname')
    expect(after.stdout.split('\n').slice(0, 2)).toEqual(['gone', a.name])
    await again.close()
    // isRunning asks the VM host whether the recorded QEMU still runs (the pool asks it before reusing a kept connection).
    expect(await provider.isRunning!(next)).toBe(true)
    await provider.delete(a.name)
    expect(await provider.isRunning!(next)).toBe(false)
    await provider.delete(b.name)
  }, 3 * QEMU_TEST_CREATE_TIMEOUT_MS)

  test('a corrupt saved state is proven broken by the restore, deleted and rebuilt once: the create still succeeds', async () => {
    const [slot] = slots()
    const slotDir = join(vmHost.hostStateDir, 'qemu-snapshots', slot!)
    const broken = (JSON.parse(readFileSync(join(slotDir, 'snapshot.json'), 'utf8')) as { id: string }).id
    const before = (await provider.list()).length
    truncateSync(join(slotDir, `state-${broken}`), 4096)
    const record = await provider.create({ name: uniqueVmName() })
    expect(record.data.restoredFrom).toBeTypeOf('string')
    expect(record.data.restoredFrom).not.toBe(broken)
    const vm = await provider.connect(record)
    expect((await vm.exec('echo rebuilt')).stdout).toBe('rebuilt\n')
    await vm.close()
    await provider.delete(record.name)
    expect((await provider.list()).length).toBe(before)
  }, 2 * QEMU_TEST_CREATE_TIMEOUT_MS)

  test('a rebuilt image rebuilds the snapshot in its slot: one slot for the shape, the old saved state gone', async () => {
    // A copy of the image, so that "rebuilding" it (a new manifest) touches nothing another test uses.
    const images = mkdtempSync(join(tmpdir(), 'vmp-host-images-'))
    cleanups.push(async () => rmSync(images, { recursive: true, force: true }))
    cpSync(join(getImageDir(), 'minimal'), join(images, 'minimal'), { recursive: true })
    const copy = useVmHostProvider(vmHost, { imageDir: images })
    cleanups.push(copy.cleanup)
    const before = slots()

    const first = await copy.provider.create({ name: uniqueVmName() })
    const [slot, ...more] = slots().filter((entry) => !before.includes(entry))
    expect(more).toEqual([])
    const slotDir = join(vmHost.hostStateDir, 'qemu-snapshots', slot!)
    expect(readdirSync(slotDir).filter((file) => file.startsWith('state'))).toEqual([`state-${first.data.restoredFrom}`])

    const manifestFile = join(images, 'minimal', 'manifest.json')
    writeFileSync(manifestFile, JSON.stringify({ ...JSON.parse(readFileSync(manifestFile, 'utf8')), createdAt: new Date().toISOString() }))
    const second = await copy.provider.create({ name: uniqueVmName() })
    expect(second.data.restoredFrom).toBeTypeOf('string')
    expect(second.data.restoredFrom).not.toBe(first.data.restoredFrom)
    expect(slots().filter((entry) => !before.includes(entry))).toEqual([slot])
    expect(readdirSync(slotDir).filter((file) => file.startsWith('state'))).toEqual([`state-${second.data.restoredFrom}`])
    // The first VM was restored from the state now gone: it runs on, as does the second.
    for (const record of [first, second]) {
      const vm = await copy.provider.connect(record)
      expect((await vm.exec('hostname')).stdout.trim()).toBe(record.name)
      await vm.close()
      await copy.provider.delete(record.name)
    }
  }, 3 * QEMU_TEST_CREATE_TIMEOUT_MS)

  test('snapshot: false cold-boots on the VM host and has no reset', async () => {
    const cold = useVmHostProvider(vmHost, { snapshot: false })
    cleanups.push(cold.cleanup)
    expect(cold.provider.reset).toBeUndefined()
    const record = await cold.provider.create({ name: uniqueVmName() })
    expect(record.data.restoredFrom).toBeUndefined()
    const vm = await cold.provider.connect(record)
    expect((await vm.exec('hostname')).stdout.trim()).toBe(record.name)
    await vm.close()
    await cold.provider.delete(record.name)
  }, QEMU_TEST_CREATE_TIMEOUT_MS)
})
