/**
 * A cloud image with cloud-init, for real: `image build debian-12 --cloud-init` makes a cloud-style
 * Debian disk (cloud-init installed, no key baked in); its files are then imported as a user imports a
 * downloaded cloud image (`vm-pool image import NAME --disk --kernel --initrd`), which makes a NEW client
 * key, host key and NoCloud seed. Booting it shows cloud-init created the user, installed that key
 * (logging in with it is the proof: the disk never saw it) and the pinned host key.
 */
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { DEBIAN_KERNEL_APPEND } from '../../src/providers/qemu/images/debian-guest-files.js'
import { loadImage, type ResolvedImage } from '../../src/providers/qemu/qemu-image.js'
import type { QemuVm } from '../../src/providers/qemu/qemu-vm.js'
import { SshTransport } from '../../src/transport/ssh-transport.js'
import { scaleTimeout } from '../../src/util/timeouts.js'
import { DEBIAN_BOOT_TIMEOUT_MS, DEBIAN_BUILD_TIMEOUT_MS, ensureDebianTestImage, getDebianSkipReason } from '../helpers/debian-image.js'
import { useQemuTestProvider, type QemuTestProvider } from '../helpers/qemu.js'

const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js')
if (!existsSync(CLI) && process.env.CI === 'true') throw new Error(`${CLI} is missing (run npm run build)`)
const skipReason = existsSync(CLI) ? await getDebianSkipReason() : `${CLI} is missing (run npm run build)`

describe.skipIf(Boolean(skipReason))('a cloud image imported with a NoCloud seed (cloud-init)', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'vmp-cloud-'))
  const imageDir = join(scratch, 'images')
  let qemu: QemuTestProvider
  let vm: QemuVm
  let image: ResolvedImage
  let port: number

  beforeAll(async () => {
    const cloud = await ensureDebianTestImage({ cloudInit: true })
    expect(cloud.manifest).toMatchObject({ kind: 'cloud-image', seed: 'seed.iso' })
    const imported = await promisify(execFile)(process.execPath, [
      CLI, 'image', 'import', 'debian-cloud', '--image-dir', imageDir, '--json',
      '--disk', join(cloud.dir, 'disk.qcow2'), '--kernel', join(cloud.dir, 'vmlinuz'), '--initrd', join(cloud.dir, 'initrd.img'),
      '--append', DEBIAN_KERNEL_APPEND, '--user', 'tester',
    ])
    expect(JSON.parse(imported.stdout)).toMatchObject({ name: 'debian-cloud', kind: 'cloud-image', user: 'tester' })
    image = await loadImage('debian-cloud', imageDir)
    // The import made its own keys: nothing the cloud build knew.
    expect(readFileSync(image.clientKey, 'utf8')).not.toBe(readFileSync(join(cloud.dir, 'client_key'), 'utf8'))
    expect(image.hostKey).not.toBe(cloud.manifest.hostKey)
    qemu = useQemuTestProvider({ imageDir, image: 'debian-cloud', bootTimeoutMs: scaleTimeout(DEBIAN_BOOT_TIMEOUT_MS) })
    const record = await qemu.provider.create({ name: 'cloud-test-a' })
    console.log(`imported cloud image: cold boot through cloud-init to first exec ${record.data.bootMs} ms`)
    vm = await qemu.provider.connect(record)
    port = record.data.port as number
  }, DEBIAN_BUILD_TIMEOUT_MS + DEBIAN_BOOT_TIMEOUT_MS)
  afterAll(async () => {
    await vm?.close()
    await qemu?.cleanup()
    rmSync(scratch, { recursive: true, force: true })
  }, 120_000)

  test('cloud-init found the NoCloud seed and finished', async () => {
    const status = await vm.exec('cloud-init status --wait --long', { timeoutMs: scaleTimeout(300_000) })
    const errors = await vm.exec('grep -E "WARNING|ERROR|Traceback" /var/log/cloud-init.log | tail -20')
    expect(status.stdout, `${status.stdout}\n${errors.stdout}`).toMatch(/status: done/)
    expect((await vm.exec('cat /run/cloud-init/result.json')).stdout).toMatch(/DataSourceNoCloud \[seed=\/dev\/vd/)
    const schema = await vm.exec('cloud-init schema --system')
    expect(schema.exitCode, `${schema.stdout}${schema.stderr}`).toBe(0)
  }, 400_000)

  test('cloud-init created the user with passwordless sudo and installed the key the import made', async () => {
    expect((await vm.exec('getent passwd tester')).stdout).toMatch(/^tester:x:\d+:\d+:vm-pool:\/home\/tester:\/bin\/bash$/m)
    expect((await vm.exec('cat /home/tester/.ssh/authorized_keys')).stdout).toContain(readFileSync(`${image.clientKey}.pub`, 'utf8').trim())
    const user = new SshTransport({ host: '127.0.0.1', port, username: 'tester', privateKey: readFileSync(image.clientKey), hostKey: image.hostKey, maxChannels: 4 })
    try {
      expect((await user.exec('id -un')).stdout).toBe('tester\n')
      expect(await user.exec('sudo -n id -u')).toMatchObject({ exitCode: 0, stdout: '0\n' })
    } finally {
      await user.close()
    }
  }, 120_000)

  test("the guest's host key is the one pinned at import; sshd got the seed's settings", async () => {
    expect((await vm.exec('cat /etc/ssh/ssh_host_ed25519_key.pub')).stdout.split(/\s+/).slice(0, 2).join(' ')).toBe(image.hostKey)
    expect((await vm.exec('ls /etc/ssh | grep -c "^ssh_host_.*_key$"')).stdout.trim()).toBe('1')
    expect((await vm.exec('sshd -T | grep -i "^maxsessions"')).stdout.trim()).toBe(`maxsessions ${image.sshMaxSessions}`)
  }, 60_000)
})
