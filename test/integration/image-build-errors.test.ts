/**
 * Image builds that cannot succeed say why and leave nothing that looks ready: a `--script` that fails
 * (its output shown), a file system that is too small (refused up front) or fills up mid-build (ENOSPC
 * named as such), and a Debian build without root. Real builds on real (tmpfs) file systems.
 */
import { execFile, execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { buildMinimalImage } from '../../src/providers/qemu/image-builder.js'
import { buildDebianImage } from '../../src/providers/qemu/images/debian-image-builder.js'
import { listImages } from '../../src/providers/qemu/images/image-store.js'
import { DEBIAN_BUILD_TIMEOUT_MS, getDebianSkipReason, getTestImageDir } from '../helpers/debian-image.js'

const skipReason = await getDebianSkipReason()
const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js')

/** Nothing but the lock files and the package cache may remain: no image dir, no scratch dir. */
function leftovers(imageDir: string): string[] {
  return readdirSync(imageDir).filter((entry) => !entry.endsWith('.lock') && entry !== '.debian-packages')
}

function mountTmpfs(dir: string, size: string): void {
  mkdirSync(dir, { recursive: true })
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir])
}

describe.skipIf(Boolean(skipReason))('image builds that fail', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'vmp-buildfail-'))
  const mounts: string[] = []
  afterAll(() => {
    for (const mount of mounts) execFileSync('umount', ['-l', mount])
    rmSync(scratch, { recursive: true, force: true })
  })

  test('a failing --script shows its output and exit code; no image is left, nothing half-built', async () => {
    // The test image dir's package cache makes this bootstrap download nothing new.
    const imageDir = getTestImageDir()
    const script = join(scratch, 'setup.sh')
    writeFileSync(script, '#!/bin/sh\necho "configuring the widget"\necho "widget.conf: no such file" >&2\nexit 3\n', { mode: 0o755 })
    const error = await buildDebianImage({ imageDir, name: 'debian-12-broken-script', script }).catch((caught: unknown) => caught)
    expect(isVmPoolError(error, 'VMPOOL_IMAGE_BUILD_FAILED')).toBe(true)
    expect((error as Error).message).toMatch(/--script .*setup\.sh failed with exit code 3; nothing was kept from this build\. Its output:\n {2}\| configuring the widget\n {2}\| widget\.conf: no such file/)
    expect((await listImages(imageDir)).map((image) => image.name)).not.toContain('debian-12-broken-script')
    expect(readdirSync(imageDir).filter((entry) => entry.includes('debian-12-broken-script') && !entry.endsWith('.lock'))).toEqual([])
  }, DEBIAN_BUILD_TIMEOUT_MS)

  test('a file system too small for a Debian build is refused before anything is downloaded', async () => {
    const imageDir = join(scratch, 'small')
    mountTmpfs(imageDir, '1g')
    mounts.push(imageDir)
    const error = await buildDebianImage({ imageDir }).catch((caught: unknown) => caught)
    expect(isVmPoolError(error, 'VMPOOL_IMAGE_BUILD_FAILED')).toBe(true)
    expect((error as Error).message).toMatch(/no space left on the device of .*small to build image debian-12: it needs at least 3\.0 GB free, 1\.1 GB is free; nothing was kept from this build\n {2}hint: .*--image-dir/)
    expect(leftovers(imageDir)).toEqual([])
  }, 60_000)

  test('running out of space mid-build is named as such, and leaves no image and no scratch dir', async () => {
    const imageDir = join(scratch, 'tiny')
    // Above the minimal recipe's up-front minimum (200 MB), below what unpacking the kernel package needs.
    mountTmpfs(imageDir, '250m')
    mounts.push(imageDir)
    const error = await buildMinimalImage({ imageDir }).catch((caught: unknown) => caught)
    expect(isVmPoolError(error, 'VMPOOL_IMAGE_BUILD_FAILED')).toBe(true)
    expect((error as Error).message).toMatch(/no space left on the device of .*tiny to build image minimal: it needs at least 0\.2 GB free, 0\.\d GB is free now; nothing was kept from this build/)
    expect(((error as Error).cause as Error).message).toMatch(/No space left on device|ENOSPC/)
    expect(leftovers(imageDir)).toEqual([])
  }, 600_000)

  test('a Debian build as a non-root user is refused, saying why and what to run instead', async () => {
    const imageDir = join(scratch, 'nonroot')
    mkdirSync(imageDir, { mode: 0o777 })
    const result = await promisify(execFile)('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, CLI, 'image', 'build', 'debian-12', '--image-dir', imageDir], { env: { ...process.env, HOME: imageDir } }).then(
      () => ({ code: 0, stderr: '' }),
      (failed: { code: number; stderr: string }) => failed,
    )
    expect(result.code).toBe(1)
    expect(result.stderr).toMatch(/building the debian-12 image needs root: mmdebstrap .*unprivileged builds .* are not supported\n {2}hint: run the build as root, e\.g\. sudo env "PATH=\$PATH" npx vm-pool image build debian-12/)
    expect(existsSync(join(imageDir, 'debian-12'))).toBe(false)
  }, 60_000)
})
