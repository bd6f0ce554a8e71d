/**
 * Real QEMU VMs: isolation between concurrent VMs, a VM killed behind the provider's back, host key
 * pinning, how a person reaches and removes a kept VM (`describe`), and boots that cannot succeed
 * (a garbage initrd; a guest that never starts SSH).
 * Two VMs are booted for the whole file and reused; the broken boots cost a few seconds each.
 */
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { isVmPoolError, type VmPoolError } from '../../src/errors.js'
import type { QemuVm } from '../../src/providers/qemu/qemu-vm.js'
import { DEFAULT_IMAGE_NAME, getImageDir, loadImage } from '../../src/providers/qemu/qemu-image.js'
import type { VmRecord } from '../../src/providers/vm-provider.js'
import { generateSshKeyPair } from '../../src/transport/ssh-keys.js'
import { isPidAlive } from '../../src/util/process-info.js'
import { scaleTimeout } from '../../src/util/timeouts.js'
import { getQemuSkipReason, QEMU_TEST_CREATE_TIMEOUT_MS, qemuPidsFor, useQemuTestProvider, type QemuTestProvider } from '../helpers/qemu.js'

const skipReason = getQemuSkipReason()

describe.skipIf(Boolean(skipReason))('qemu provider with real VMs', () => {
  let qemu: QemuTestProvider
  let records: VmRecord[] = []
  let vms: QemuVm[] = []
  const names = ['test-qemu-iso-a', 'test-qemu-iso-b'].map((name) => `${name}-${process.pid}`)

  beforeAll(async () => {
    qemu = useQemuTestProvider()
    // Both at once: the two creates race for free ports and boot side by side.
    records = await Promise.all(names.map((name) => qemu.provider.create({ name, labels: { test: 'qemu-integration' } })))
    vms = await Promise.all(records.map((record) => qemu.provider.connect(record)))
  }, QEMU_TEST_CREATE_TIMEOUT_MS)

  afterAll(async () => {
    for (const vm of vms) await vm.close()
    await qemu?.cleanup()
  }, 60_000)

  test('concurrent VMs get distinct ports and do not see each other’s files', async () => {
    const [a, b] = vms as [QemuVm, QemuVm]
    expect(records[0]!.data.port).not.toBe(records[1]!.data.port)
    await a.putFile('/root/owner.txt', 'a\n')
    await b.putFile('/root/owner.txt', 'b\n')
    await a.exec('touch /tmp/only-in-a')
    expect((await a.getFile('/root/owner.txt')).toString()).toBe('a\n')
    expect((await b.getFile('/root/owner.txt')).toString()).toBe('b\n')
    expect((await b.exec('test -e /tmp/only-in-a && echo seen || echo unseen')).stdout).toBe('unseen\n')
    const listed = await qemu.provider.list()
    for (const name of names) expect(listed.find((info) => info.name === name)).toMatchObject({ state: 'running', labels: { test: 'qemu-integration' } })
  })

  test('concurrent execs on one VM all complete with their own output and exit code', async () => {
    const results = await Promise.all(Array.from({ length: 24 }, (_, i) => vms[0]!.exec(`echo ${i}; echo e${i} >&2; exit ${i % 5}`)))
    expect(results.map((r) => [r.stdout, r.stderr, r.exitCode])).toEqual(Array.from({ length: 24 }, (_, i) => [`${i}\n`, `e${i}\n`, i % 5]))
  }, 60_000)

  test('a pinned host key that does not match is refused', async () => {
    const forged: VmRecord = { ...records[0]!, data: { ...records[0]!.data, hostKey: generateSshKeyPair().publicKey } }
    const vm = await qemu.provider.connect(forged)
    try {
      await expect(vm.exec('echo should-not-run')).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_HOST_KEY_MISMATCH'))
    } finally {
      await vm.close()
    }
  })

  test('a QEMU killed by hand is listed as dead, and delete still cleans up', async () => {
    const [name, record] = [names[1]!, records[1]!]
    const vmDir = String(record.data.vmDir)
    const { pid } = JSON.parse(readFileSync(join(vmDir, 'process.json'), 'utf8')) as { pid: number }
    expect(qemuPidsFor(name)).toEqual([pid])
    process.kill(pid, 'SIGKILL')
    for (let i = 0; i < 50 && isPidAlive(pid); i++) await new Promise((resolve) => setTimeout(resolve, 100))
    expect((await qemu.provider.list()).find((info) => info.name === name)?.state).toBe('dead')
    await expect(vms[1]!.exec('true')).rejects.toSatisfy((error) => isVmPoolError(error))
    await qemu.provider.delete(name)
    expect(existsSync(vmDir)).toBe(false)
    expect((await qemu.provider.list()).some((info) => info.name === name)).toBe(false)
    // The other VM is unaffected.
    expect((await vms[0]!.exec('echo alive')).stdout).toBe('alive\n')
  })

  test('describe: its ssh line gets a shell with the pinned host key and no key contents; its remove line deletes that VM alone', async () => {
    const [name, record] = [names[0]!, records[0]!]
    const help = qemu.provider.describe(record)
    const keyPath = String(record.data.keyPath)
    expect(help.reach).toContain(keyPath)
    expect(`${help.reach}\n${help.remove}`).not.toContain(readFileSync(keyPath, 'utf8').split('\n')[1]!)
    const ssh = (line: string) => spawnSync('sh', ['-c', `${line} 'hostname; echo reached'`], { encoding: 'utf8', timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] })
    const reached = ssh(help.reach)
    expect(reached.status, reached.stderr).toBe(0)
    expect(reached.stdout).toBe(`${name}\nreached\n`)
    expect(reached.stderr).toBe('')
    // The host key is really checked: the same line against a known_hosts file with another key is refused.
    const forged = join(mkdtempSync(join(tmpdir(), 'vmp-kh-')), 'known_hosts')
    writeFileSync(forged, `vm-pool-${name} ${generateSshKeyPair().publicKey}\n`)
    const refused = ssh(help.reach.replace(join(String(record.data.vmDir), 'known_hosts'), forged))
    expect(refused.status).not.toBe(0)
    expect(refused.stderr).toMatch(/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED/)
    rmSync(join(forged, '..'), { recursive: true, force: true })

    await vms[0]!.close()
    const pid = record.data.pid as number
    const removed = spawnSync('sh', ['-c', help.remove], { encoding: 'utf8' })
    expect(removed.status, removed.stderr).toBe(0)
    for (let i = 0; i < 100 && isPidAlive(pid); i++) await new Promise((resolve) => setTimeout(resolve, 100))
    expect(isPidAlive(pid)).toBe(false)
    expect(qemuPidsFor(name)).toEqual([])
    expect(existsSync(String(record.data.vmDir))).toBe(false)
    expect((await qemu.provider.list()).some((info) => info.name === name)).toBe(false)
  }, 90_000)
})

describe.skipIf(Boolean(skipReason))('qemu boots that cannot succeed', () => {
  const imageDir = mkdtempSync(join(tmpdir(), 'vmp-img-'))
  // Room for a kernel to reach its panic (or its last console line) on 2 busy cores: 12 s was not always enough.
  const bootTimeoutMs = scaleTimeout(30_000)
  let qemu: QemuTestProvider

  /** A copy of the built image's manifest and key, with the given initrd. */
  async function makeImage(name: string, initrd: Buffer): Promise<void> {
    const real = await loadImage(DEFAULT_IMAGE_NAME, getImageDir())
    const dir = join(imageDir, name)
    mkdirSync(dir)
    copyFileSync(real.clientKey, join(dir, 'client_key'))
    writeFileSync(join(dir, 'initrd.img'), initrd)
    const manifest = JSON.parse(readFileSync(join(real.dir, 'manifest.json'), 'utf8')) as Record<string, unknown>
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ ...manifest, name, kernel: real.kernel, initrd: 'initrd.img', clientKey: 'client_key' }))
  }

  beforeAll(async () => {
    qemu = useQemuTestProvider({ imageDir, bootTimeoutMs })
    await makeImage('garbage', Buffer.from('this is not a cpio archive, it is garbage\n'.repeat(1000)))
    // A valid initramfs whose /init never starts an SSH server (and prints the boot marker, so SSH is tried).
    const root = join(imageDir, 'silent-root')
    mkdirSync(join(root, 'bin'), { recursive: true })
    copyFileSync('/bin/busybox', join(root, 'bin/busybox'))
    writeFileSync(join(root, 'init'), '#!/bin/busybox sh\n/bin/busybox echo "vm-pool: guest network up (not really)"\nwhile :; do /bin/busybox sleep 1000; done\n', { mode: 0o755 })
    const cpio = spawnSync('sh', ['-c', 'find . | cpio -o -H newc -R 0:0 --quiet | gzip -1'], { cwd: root, maxBuffer: 64 << 20 })
    if (cpio.status !== 0) throw new Error(`cpio failed: ${cpio.stderr}`)
    await makeImage('silent', cpio.stdout)
  }, 60_000)

  afterAll(async () => {
    await qemu?.cleanup()
    rmSync(imageDir, { recursive: true, force: true })
  }, 60_000)

  test('a garbage initrd fails fast with the console output, and leaves no process or state', async () => {
    const name = `test-qemu-garbage-${process.pid}`
    const started = performance.now()
    const error = await qemu.provider.create({ name, image: 'garbage' }).catch((e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_CREATE_FAILED')).toBe(true)
    expect((error as Error).message).toMatch(/QEMU exited while the guest was booting/)
    expect((error as Error).message).toMatch(/Kernel panic|Unable to mount root/)
    expect(performance.now() - started).toBeLessThan(bootTimeoutMs)
    expect(qemuPidsFor(name)).toEqual([])
    expect(await qemu.provider.list()).toEqual([])
  }, 60_000 + bootTimeoutMs)

  test('a guest that never answers SSH fails with VMPOOL_BOOT_TIMEOUT, is killed, and leaves nothing', async () => {
    const name = `test-qemu-silent-${process.pid}`
    const error = await qemu.provider.create({ name, image: 'silent' }).catch((e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_BOOT_TIMEOUT')).toBe(true)
    expect((error as Error).message).toMatch(new RegExp(`timed out after ${bootTimeoutMs} ms waiting for SSH on 127\\.0\\.0\\.1:\\d+ \\(BOOT_TIMEOUT_MS`))
    expect((error as Error).message).toContain('guest network up (not really)')
    // This provider was given bootTimeoutMs, which VM_POOL_TIMEOUT_SCALE does not scale: the hint says which knob works.
    expect((error as VmPoolError).hint).toMatch(/the bootTimeoutMs provider option set this timeout.*raise bootTimeoutMs/)
    expect(qemuPidsFor(name)).toEqual([])
    expect(await qemu.provider.list()).toEqual([])
  }, 60_000 + 2 * bootTimeoutMs)

  test('a missing image names the command that builds it', async () => {
    const error = await qemu.provider.create({ name: `test-qemu-noimage-${process.pid}`, image: 'minimal' }).catch((e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_IMAGE_MISSING')).toBe(true)
    expect((error as VmPoolErrorLike).hint).toMatch(/vm-pool image build/)
  })
})

interface VmPoolErrorLike {
  hint?: string
}
