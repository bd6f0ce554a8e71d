/**
 * The debian-12 image on real QEMU VMs (booted by the provider as it is today: the image's kernel and
 * initrd, the disk behind QEMU's throwaway `snapshot=on` overlay): systemd reaches `running`, the
 * build's --script ran, apt-get installs from Debian's mirror through user-mode NAT, the non-root user
 * has passwordless sudo and the image's key, sshd takes 24 concurrent exec channels on one connection,
 * and the root file system fills whatever disk the VM gets (grown at boot).
 */
import { execFileSync } from 'node:child_process'
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { loadImage, type ResolvedImage } from '../../src/providers/qemu/qemu-image.js'
import type { QemuVm } from '../../src/providers/qemu/qemu-vm.js'
import { SshTransport } from '../../src/transport/ssh-transport.js'
import { scaleTimeout } from '../../src/util/timeouts.js'
import { DEBIAN_BOOT_TIMEOUT_MS, DEBIAN_BUILD_TIMEOUT_MS, ensureDebianTestImage, getDebianSkipReason, getTestImageDir } from '../helpers/debian-image.js'
import { useQemuTestProvider, type QemuTestProvider } from '../helpers/qemu.js'

const skipReason = await getDebianSkipReason()
const GIB = 1024 ** 3

describe.skipIf(Boolean(skipReason))('the debian-12 image on QEMU', () => {
  let qemu: QemuTestProvider
  let vm: QemuVm
  let image: ResolvedImage
  let port: number
  const scratch = mkdtempSync(join(tmpdir(), 'vmp-debian-'))

  beforeAll(async () => {
    const built = await ensureDebianTestImage()
    image = await loadImage(built.dir, getTestImageDir())
    qemu = useQemuTestProvider({ imageDir: getTestImageDir(), image: 'debian-12', bootTimeoutMs: scaleTimeout(DEBIAN_BOOT_TIMEOUT_MS) })
    const started = performance.now()
    const record = await qemu.provider.create({ name: 'debian-test-a' })
    console.log(`debian-12 cold boot to first exec: ${record.data.bootMs} ms (create ${Math.round(performance.now() - started)} ms)`)
    vm = await qemu.provider.connect(record)
    port = record.data.port as number
  }, DEBIAN_BUILD_TIMEOUT_MS + DEBIAN_BOOT_TIMEOUT_MS)
  afterAll(async () => {
    await vm?.close()
    await qemu?.cleanup()
    rmSync(scratch, { recursive: true, force: true })
  }, 120_000)

  test('systemd reaches "running" with no failed unit', async () => {
    const state = await vm.exec('systemctl is-system-running --wait', { timeoutMs: scaleTimeout(300_000) })
    const failed = await vm.exec('systemctl --failed --no-legend --plain')
    expect(state.stdout.trim(), `failed units:\n${failed.stdout}`).toBe('running')
  }, 400_000)

  test('it is Debian 12, with the build --script applied and the VM name as hostname', async () => {
    expect((await vm.exec('. /etc/os-release && echo "$ID $VERSION_ID"')).stdout).toBe('debian 12\n')
    expect((await vm.exec('cat /etc/vm-pool-test-script')).stdout).toBe('written by the vm-pool test --script\n')
    expect((await vm.exec('hostname')).stdout).toBe('debian-test-a\n')
  })

  test('the non-root user logs in with the image key and has passwordless sudo (no "unable to resolve host")', async () => {
    expect(image.sudoUser).toBe('debian')
    const user = new SshTransport({ host: '127.0.0.1', port, username: image.sudoUser!, privateKey: readFileSync(image.clientKey), hostKey: image.hostKey, maxChannels: 4 })
    try {
      expect((await user.exec('id -un')).stdout).toBe('debian\n')
      const sudo = await user.exec('sudo -n id -u')
      expect(sudo).toMatchObject({ exitCode: 0, stdout: '0\n', stderr: '' })
    } finally {
      await user.close()
    }
  }, 60_000)

  test('sshd takes 24 concurrent exec channels on one connection (MaxSessions)', async () => {
    expect(image.sshMaxSessions).toBeGreaterThanOrEqual(24)
    const root = new SshTransport({ host: '127.0.0.1', port, username: 'root', privateKey: readFileSync(image.clientKey), hostKey: image.hostKey, maxChannels: 24 })
    try {
      // Every command waits until all 24 are running at once: 24 channels really were open together.
      const results = await Promise.all(Array.from({ length: 24 }, (_, i) => root.exec(`touch /tmp/ch-${i}; while [ "$(ls /tmp | grep -c '^ch-')" -lt 24 ]; do sleep 0.2; done; echo ${i}`, { timeoutMs: scaleTimeout(120_000) })))
      expect(results.map((result) => result.stdout.trim())).toEqual(Array.from({ length: 24 }, (_, i) => String(i)))
    } finally {
      await root.close()
    }
  }, 400_000)

  test("apt-get installs a package from Debian's mirror through user-mode NAT", async () => {
    const install = await vm.exec('apt-get update -q && apt-get install -y -q --no-install-recommends hello && hello', { timeoutMs: scaleTimeout(600_000), env: { DEBIAN_FRONTEND: 'noninteractive' } })
    expect(install.exitCode, install.stderr).toBe(0)
    expect(install.stdout).toMatch(/Hello, world!\n$/)
  }, 2_000_000)

  test("the root file system fills the disk, and grows at boot to a bigger disk (a 4 GiB overlay)", async () => {
    const size = async (target: QemuVm) => Number((await target.exec("df -B1 --output=size / | tail -1")).stdout.trim())
    expect(image.diskVirtualBytes).toBeGreaterThanOrEqual(2 * GIB)
    expect(image.growsRootFs).toBe(true)
    expect(await size(vm)).toBeGreaterThan(image.diskVirtualBytes! * 0.95)

    // What a per-VM overlay of diskGiB: 4 will give: the same image, its disk seen through a bigger qcow2 overlay.
    const bigDir = join(scratch, 'images', 'debian-12-4g')
    cpSync(image.dir, bigDir, { recursive: true, filter: (source) => !source.endsWith('disk.qcow2') })
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', join(image.dir, 'disk.qcow2'), join(bigDir, 'disk.qcow2'), '4G'])
    const manifest = JSON.parse(readFileSync(join(bigDir, 'manifest.json'), 'utf8')) as Record<string, unknown>
    writeFileSync(join(bigDir, 'manifest.json'), JSON.stringify({ ...manifest, name: 'debian-12-4g', diskVirtualBytes: 4 * GIB }))
    const big = useQemuTestProvider({ imageDir: join(scratch, 'images'), image: 'debian-12-4g', bootTimeoutMs: scaleTimeout(DEBIAN_BOOT_TIMEOUT_MS) })
    try {
      const bigVm = await big.provider.connect(await big.provider.create({ name: 'debian-test-4g' }))
      try {
        // systemd-growfs runs early in the boot; --wait covers a slow host.
        await bigVm.exec('systemctl is-system-running --wait', { timeoutMs: scaleTimeout(300_000) })
        const bytes = await size(bigVm)
        expect(bytes).toBeGreaterThan(3.8 * GIB)
        expect(bytes).toBeLessThanOrEqual(4 * GIB)
      } finally {
        await bigVm.close()
      }
    } finally {
      await big.cleanup()
    }
  }, DEBIAN_BOOT_TIMEOUT_MS + 400_000)
})
