/**
 * Snapshots of a disk image (debian-12, `snapshot: 'auto'`): the template's disk is frozen at the save
 * point (read-only, beside the saved RAM), every restored VM writes to its own qcow2 overlay on it, so
 * two VMs restored from one template never see each other's writes; `reset` gives a VM a new overlay;
 * a rebuilt image (another inputs hash in its manifest) makes the snapshot stale and it is rebuilt.
 * The image is the shared Debian test image, hard-linked into a scratch image dir beside it (its
 * manifest is rewritten here to play "rebuilt"). QEMU time: two template boots, four restores.
 */
import { execFileSync } from 'node:child_process'
import { linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { SNAPSHOT_MANIFEST_FILE } from '../../src/providers/qemu/qemu-snapshot.js'
import type { QemuVm } from '../../src/providers/qemu/qemu-vm.js'
import type { VmRecord } from '../../src/providers/vm-provider.js'
import { scaleTimeout } from '../../src/util/timeouts.js'
import { DEBIAN_BOOT_TIMEOUT_MS, DEBIAN_BUILD_TIMEOUT_MS, ensureDebianTestImage, getDebianSkipReason, getTestImageDir } from '../helpers/debian-image.js'
import { useQemuTestProvider, type QemuTestProvider } from '../helpers/qemu.js'

const skipReason = await getDebianSkipReason()
const IMAGE = 'deb-snap'

describe.skipIf(Boolean(skipReason))('snapshots of the debian-12 disk image', () => {
  // Beside the test images (same file system: hard links), a dot-dir so image listings skip it.
  const scratch = join(getTestImageDir(), `.snapshot-test-${process.pid}`)
  const imageDir = join(scratch, 'images')
  // Short: the template's monitor socket lives in it.
  const snapshotDir = mkdtempSync(join(tmpdir(), 'vmp-dsnap-'))
  let qemu: QemuTestProvider
  const records = new Map<string, VmRecord>()
  const vms = new Map<string, QemuVm>()

  const slotDir = () => {
    const slots = readdirSync(snapshotDir, { withFileTypes: true }).filter((entry) => entry.isDirectory())
    expect(slots).toHaveLength(1)
    return join(snapshotDir, slots[0]!.name)
  }
  const snapshotManifest = () => JSON.parse(readFileSync(join(slotDir(), SNAPSHOT_MANIFEST_FILE), 'utf8')) as { id: string; diskFile?: string; bootMs: number; saveMs: number; stateBytes: number }

  async function create(name: string): Promise<QemuVm> {
    const started = performance.now()
    const record = await qemu.provider.create({ name })
    console.log(`${name}: create ${Math.round(performance.now() - started)} ms (bootMs ${record.data.bootMs}, restoredFrom ${record.data.restoredFrom ?? '-'})`)
    records.set(name, record)
    const vm = await qemu.provider.connect(record)
    vms.set(name, vm)
    return vm
  }

  beforeAll(async () => {
    const built = await ensureDebianTestImage()
    rmSync(scratch, { recursive: true, force: true })
    mkdirSync(join(imageDir, IMAGE), { recursive: true })
    for (const file of readdirSync(built.dir)) linkSync(join(built.dir, file), join(imageDir, IMAGE, file))
    qemu = useQemuTestProvider({ imageDir, image: IMAGE, snapshotDir, bootTimeoutMs: scaleTimeout(DEBIAN_BOOT_TIMEOUT_MS) })
    // Two creates at once share one template boot, then both restore.
    await Promise.all([create('deb-snap-a'), create('deb-snap-b')])
    const manifest = snapshotManifest()
    console.log(`debian-12 template cold boot ${manifest.bootMs} ms, save ${manifest.saveMs} ms (${Math.round(manifest.stateBytes / 1e6)} MB state); restores ${records.get('deb-snap-a')!.data.bootMs} and ${records.get('deb-snap-b')!.data.bootMs} ms`)
  }, DEBIAN_BUILD_TIMEOUT_MS + DEBIAN_BOOT_TIMEOUT_MS)
  afterAll(async () => {
    for (const vm of vms.values()) await vm.close()
    await qemu?.cleanup()
    rmSync(scratch, { recursive: true, force: true })
    rmSync(snapshotDir, { recursive: true, force: true })
  }, 120_000)

  test('both VMs were restored from one snapshot whose frozen disk is read-only, each on its own overlay', async () => {
    const manifest = snapshotManifest()
    expect(manifest.diskFile).toMatch(/^disk-[0-9a-f]{16}\.qcow2$/)
    const frozen = join(slotDir(), manifest.diskFile!)
    expect(statSync(frozen).mode & 0o222).toBe(0)
    for (const name of ['deb-snap-a', 'deb-snap-b']) {
      const record = records.get(name)!
      expect(record.data.restoredFrom).toBe(manifest.id)
      const overlay = join(record.data.vmDir as string, 'disk.qcow2')
      const info = JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', overlay], { encoding: 'utf8' })) as { format: string; 'backing-filename': string }
      expect(info).toMatchObject({ format: 'qcow2', 'backing-filename': frozen })
      expect((await vms.get(name)!.exec('hostname')).stdout).toBe(`${name}\n`)
    }
  })

  test('a restored VM runs systemd and sshd as a booted one does', async () => {
    const vm = vms.get('deb-snap-b')!
    const state = await vm.exec('systemctl is-system-running --wait', { timeoutMs: scaleTimeout(300_000) })
    const failed = await vm.exec('systemctl --failed --no-legend --plain')
    expect(state.stdout.trim(), `failed units:\n${failed.stdout}`).toBe('running')
    expect((await vm.exec('. /etc/os-release && echo "$ID $VERSION_ID"')).stdout).toBe('debian 12\n')
  }, 400_000)

  test('two VMs restored from one template never see each other\'s writes', async () => {
    const [a, b] = [vms.get('deb-snap-a')!, vms.get('deb-snap-b')!]
    // sync + drop_caches: the files really went to (and come back from) each VM's disk.
    expect((await a.exec('echo from-a > /root/written && sync && echo 3 > /proc/sys/vm/drop_caches && cat /root/written')).stdout).toBe('from-a\n')
    expect((await b.exec('echo from-b > /root/written && sync && echo 3 > /proc/sys/vm/drop_caches && cat /root/written')).stdout).toBe('from-b\n')
    expect((await a.exec('cat /root/written')).stdout).toBe('from-a\n')
    expect((await a.exec('echo only-a > /var/tmp/only-a && sync')).exitCode).toBe(0)
    expect((await b.exec('test -e /var/tmp/only-a')).exitCode).toBe(1)
  })

  test('reset gives the VM a new overlay on the snapshot: its writes are gone, the name and snapshot stay', async () => {
    const before = records.get('deb-snap-a')!
    await vms.get('deb-snap-a')!.close()
    const started = performance.now()
    const record = await qemu.provider.reset!('deb-snap-a')
    console.log(`deb-snap-a: reset ${Math.round(performance.now() - started)} ms`)
    records.set('deb-snap-a', record)
    const vm = await qemu.provider.connect(record)
    vms.set('deb-snap-a', vm)
    expect(record.data.restoredFrom).toBe(before.data.restoredFrom)
    expect((await vm.exec('test -e /root/written || test -e /var/tmp/only-a')).exitCode).toBe(1)
    expect((await vm.exec('hostname')).stdout).toBe('deb-snap-a\n')
    // B was not touched by A's reset.
    expect((await vms.get('deb-snap-b')!.exec('cat /root/written')).stdout).toBe('from-b\n')
  }, 300_000)

  test('a rebuilt image (another inputs hash) makes the snapshot stale: the next create rebuilds it', async () => {
    const old = snapshotManifest()
    const manifestFile = join(imageDir, IMAGE, 'manifest.json')
    const manifest = JSON.parse(readFileSync(manifestFile, 'utf8')) as { build: Record<string, string> }
    // A new file, not the hard link: the shared test image keeps its manifest.
    rmSync(manifestFile)
    writeFileSync(manifestFile, JSON.stringify({ ...manifest, build: { ...manifest.build, inputs: `${manifest.build.inputs}-rebuilt` } }, null, 2))
    const vm = await create('deb-snap-c')
    const now = snapshotManifest()
    expect(now.id).not.toBe(old.id)
    expect(records.get('deb-snap-c')!.data.restoredFrom).toBe(now.id)
    // The old frozen disk is gone from the slot; only the new one is there.
    expect(readdirSync(slotDir()).filter((file) => file.startsWith('disk-'))).toEqual([now.diskFile])
    expect((await vm.exec('test -e /root/written')).exitCode).toBe(1)
    // B still runs on the removed disk (QEMU keeps it open).
    expect((await vms.get('deb-snap-b')!.exec('cat /root/written')).stdout).toBe('from-b\n')
  }, DEBIAN_BOOT_TIMEOUT_MS + 300_000)
})
