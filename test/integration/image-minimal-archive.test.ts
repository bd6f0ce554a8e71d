/**
 * A host without Debian's apt (Ubuntu, or no apt at all), played here by hiding apt-get, apt-cache,
 * dpkg and dpkg-deb from PATH: `vm-pool image build` fetches the kernel, busybox-static, dropbear-bin
 * and dropbear's libraries straight from Debian's archive (SHA256-checked), and the image boots.
 */
import { execFile } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, test } from 'vitest'
import type { ImageManifest } from '../../src/providers/qemu/qemu-image.js'
import { getQemuSkipReason, QEMU_TEST_CREATE_TIMEOUT_MS, useQemuTestProvider } from '../helpers/qemu.js'

const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js')
const distMissing = existsSync(CLI) ? undefined : `${CLI} is missing (run npm run build)`
if (distMissing && process.env.CI === 'true') throw new Error(distMissing)
const skipReason = distMissing ?? getQemuSkipReason()

/** A PATH with every program of the usual bin dirs except apt* and dpkg*. */
function makePathWithoutApt(dir: string): string {
  mkdirSync(dir)
  for (const bin of ['/usr/local/bin', '/usr/bin', '/bin', '/usr/local/sbin', '/usr/sbin', '/sbin']) {
    for (const name of existsSync(bin) ? readdirSync(bin) : []) {
      if (/^(apt|dpkg)/.test(name) || existsSync(join(dir, name))) continue
      symlinkSync(join(bin, name), join(dir, name))
    }
  }
  return dir
}

describe.skipIf(Boolean(skipReason))('minimal image without apt and dpkg on PATH', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'vmp-noapt-'))
  afterAll(() => rmSync(scratch, { recursive: true, force: true }))

  test("builds from Debian's archive over HTTPS (SHA256-checked) and boots", async () => {
    const path = makePathWithoutApt(join(scratch, 'bin'))
    expect(readdirSync(path).filter((name) => /^(apt|dpkg)/.test(name))).toEqual([])
    const imageDir = join(scratch, 'images')
    const built = await promisify(execFile)(process.execPath, [CLI, 'image', 'build', '--image-dir', imageDir, '--json'], { env: { ...process.env, PATH: path }, timeout: 600_000 })
    expect(built.stderr).toMatch(/Debian packages from Debian's archive \(apt-get is not on PATH\)/)
    expect(built.stderr).toMatch(/InRelease (signature verified with gpgv|trusted through HTTPS only)/)
    expect(built.stderr).toMatch(/downloading linux-image-\S+ \S+, busybox-static \S+, dropbear-bin \S+, libc6 .*\(SHA256 checked against the Packages index\)/)
    const manifest = JSON.parse(readFileSync(join(imageDir, 'minimal', 'manifest.json'), 'utf8')) as ImageManifest
    expect(manifest.build).toMatchObject({ source: 'debian-archive', kernelPackage: expect.stringMatching(/^linux-image-\d/) })

    // Cached: the same source and recipe reuse it, with no network access needed to decide.
    const again = await promisify(execFile)(process.execPath, [CLI, 'image', 'build', '--image-dir', imageDir, '--json'], { env: { ...process.env, PATH: path } })
    expect(JSON.parse(again.stdout)).toMatchObject({ reused: true })

    const qemu = useQemuTestProvider({ imageDir, snapshot: false })
    try {
      const vm = await qemu.provider.connect(await qemu.provider.create({ name: 'noapt-minimal' }))
      expect((await vm.exec('uname -r')).stdout).toBe(`${manifest.build.kernelVersion}\n`)
      // Debian's dropbear with Debian's libraries and loader, not the host's.
      const libraries = await vm.exec('ls /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/libc.so.6 /usr/lib/x86_64-linux-gnu/libtomcrypt.so.1')
      expect(libraries.exitCode, libraries.stderr).toBe(0)
      await vm.close()
    } finally {
      await qemu.cleanup()
    }
  }, 600_000 + QEMU_TEST_CREATE_TIMEOUT_MS)
})
