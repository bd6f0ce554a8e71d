/**
 * `vm-pool image build|import|ls|rm` and `doctor` through the built CLI, in throwaway image dirs:
 * bad input is refused with exit 2 and a message that says what is wrong (unknown recipe or image
 * → the ones that exist; a missing, non-qcow2 or overlay disk; options of another recipe); an import
 * makes a bootable layout (keys, seed, manifest); `ls` shows images with their snapshots; `rm` refuses
 * while a running VM uses the image and removes the image and its snapshots otherwise.
 */
import { execFile, execFileSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { DEFAULT_IMAGE_NAME, getImageDir, loadImage } from '../../src/providers/qemu/qemu-image.js'
import { getQemuSkipReason, QEMU_TEST_CREATE_TIMEOUT_MS, useQemuTestProvider } from '../helpers/qemu.js'

const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js')
const distMissing = existsSync(CLI) ? undefined : `${CLI} is missing (run npm run build)`
if (distMissing && process.env.CI === 'true') throw new Error(distMissing)

const scratch = mkdtempSync(join(tmpdir(), 'vmp-imgcli-'))
afterAll(() => rmSync(scratch, { recursive: true, force: true }))

async function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, timeout: 300_000 })
    return { code: 0, stdout, stderr }
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string }
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr }
  }
}

/** A hand-written image (a kernel-less manifest needs a disk): enough for ls, rm and "images there" lists. */
function writeCustomImage(imageDir: string, name: string): void {
  const dir = join(imageDir, name)
  mkdirSync(dir, { recursive: true })
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'disk.qcow2'), '64M'])
  writeFileSync(join(dir, 'client_key'), 'not a real key\n', { mode: 0o600 })
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ recipeVersion: 1, name, disk: 'disk.qcow2', hostKey: 'SHA256:x', clientKey: 'client_key' }))
}

describe.skipIf(Boolean(distMissing))('image commands: bad input', () => {
  const imageDir = join(scratch, 'bad')
  writeCustomImage(imageDir, 'custom-a')

  test('an unknown recipe is refused with the recipes and the images that exist', async () => {
    const result = await cli(['image', 'build', 'ubuntu-24', '--image-dir', imageDir])
    expect(result.code).toBe(2)
    expect(result.stderr).toMatch(/unknown image recipe "ubuntu-24": the recipes are minimal, debian-12; images in .*bad: custom-a/)
  })

  test('an unknown image at boot names the images that exist', async () => {
    const error = await loadImage('debian-13', imageDir).catch((caught: unknown) => caught)
    expect(isVmPoolError(error, 'VMPOOL_IMAGE_MISSING')).toBe(true)
    expect((error as Error).message).toMatch(/image "debian-13" not found: .* does not exist; images in .*bad: custom-a/)
  })

  test("options of the Debian recipe are refused for minimal; a bad package name or a missing --script for debian-12", async () => {
    const packages = await cli(['image', 'build', '--packages', 'curl', '--image-dir', imageDir])
    expect(packages.code).toBe(2)
    expect(packages.stderr).toMatch(/packages is for the debian-12 recipe, not for minimal/)
    const badName = await cli(['image', 'build', 'debian-12', '--packages', 'curl,Bad_Name', '--image-dir', imageDir])
    expect(badName.code).toBe(2)
    expect(badName.stderr).toMatch(/invalid Debian package name "Bad_Name"/)
    const script = await cli(['image', 'build', 'debian-12', '--script', join(scratch, 'no-such-script.sh'), '--image-dir', imageDir])
    expect(script.code).toBe(2)
    expect(script.stderr).toMatch(/--script .*no-such-script\.sh: no such file/)
    expect((await cli(['image', 'ls', '--packages', 'x'])).stderr).toMatch(/--packages is not an option of `image ls`/)
  })

  test('import refuses a missing disk, a file that is not qcow2, a qcow2 overlay, --initrd without --kernel', async () => {
    const missing = await cli(['image', 'import', 'x', '--disk', join(scratch, 'nope.qcow2'), '--image-dir', imageDir])
    expect(missing.code).toBe(2)
    expect(missing.stderr).toMatch(/--disk .*nope\.qcow2: no such file/)
    writeFileSync(join(scratch, 'disk.img'), Buffer.alloc(1024 * 1024))
    const raw = await cli(['image', 'import', 'x', '--disk', join(scratch, 'disk.img'), '--image-dir', imageDir])
    expect(raw.code).toBe(2)
    expect(raw.stderr).toMatch(/disk\.img is not a qcow2 image .*\n.*hint: convert it first: qemu-img convert -O qcow2/)
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', join(imageDir, 'custom-a', 'disk.qcow2'), join(scratch, 'overlay.qcow2')])
    const overlay = await cli(['image', 'import', 'x', '--disk', join(scratch, 'overlay.qcow2'), '--image-dir', imageDir])
    expect(overlay.code).toBe(2)
    expect(overlay.stderr).toMatch(/overlay\.qcow2 is an overlay on .*custom-a\/disk\.qcow2; import a standalone image/)
    const initrd = await cli(['image', 'import', 'x', '--disk', join(imageDir, 'custom-a', 'disk.qcow2'), '--initrd', join(scratch, 'disk.img'), '--image-dir', imageDir])
    expect(initrd.code).toBe(2)
    expect(initrd.stderr).toMatch(/--initrd needs --kernel/)
    expect((await cli(['image', 'import', 'x', '--image-dir', imageDir])).stderr).toMatch(/missing --disk FILE\.qcow2/)
    expect(readdirSync(imageDir).filter((entry) => !entry.startsWith('.') && !entry.endsWith('.lock'))).toEqual(['custom-a'])
  })

  test('import makes keys, a NoCloud seed and a manifest; an existing name needs --force; rm removes it', async () => {
    const disk = join(imageDir, 'custom-a', 'disk.qcow2')
    const first = await cli(['image', 'import', 'cloud-x', '--disk', disk, '--image-dir', imageDir, '--json'])
    expect(first.code, first.stderr).toBe(0)
    const image = await loadImage('cloud-x', imageDir)
    expect(image).toMatchObject({ kind: 'cloud-image', username: 'root', sudoUser: 'debian', diskVirtualBytes: 64 * 1024 * 1024, growsRootFs: true, bootMarker: 'vm-pool: cloud-init finished' })
    expect(image.kernel).toBeUndefined()
    expect(execFileSync('blkid', ['-p', '-o', 'export', image.seed!], { encoding: 'utf8' })).toMatch(/LABEL=cidata/)
    const again = await cli(['image', 'import', 'cloud-x', '--disk', disk, '--image-dir', imageDir])
    expect(again.code).toBe(2)
    expect(again.stderr).toMatch(/image cloud-x already exists .*\n.*hint: --force replaces it/)
    expect((await cli(['image', 'import', 'cloud-x', '--disk', disk, '--image-dir', imageDir, '--force'])).code).toBe(0)
    const removed = await cli(['image', 'rm', 'cloud-x', '--image-dir', imageDir])
    expect(removed).toMatchObject({ code: 0, stdout: expect.stringMatching(/^removed image cloud-x \(\d+ kB\)\n$/) })
    const gone = await cli(['image', 'rm', 'cloud-x', '--image-dir', imageDir])
    expect(gone.code).toBe(2)
    expect(gone.stderr).toMatch(/image "cloud-x" not found in .*; images there: custom-a/)
  }, 60_000)
})

const qemuSkip = distMissing ?? getQemuSkipReason()

describe.skipIf(Boolean(qemuSkip))('image ls / rm / doctor with a VM running from the image', () => {
  test('ls shows the image and its snapshot; rm is refused while the VM runs, --force removes image and snapshot; doctor lists images', async () => {
    const imageDir = join(scratch, 'live')
    mkdirSync(imageDir, { recursive: true })
    // A copy of the shared minimal image under another name: never touch the shared one.
    cpSync(join(getImageDir(), DEFAULT_IMAGE_NAME), join(imageDir, 'mini'), { recursive: true })
    const qemu = useQemuTestProvider({ imageDir, image: 'mini' })
    const env = { VM_POOL_STATE_DIR: qemu.stateDir, VM_POOL_IMAGE_DIR: imageDir }
    try {
      await qemu.provider.create({ name: 'img-rm-test' })
      const listed = JSON.parse((await cli(['image', 'ls', '--json'], env)).stdout) as Array<{ name: string; kind: string; sizeBytes: number; snapshots: Array<{ sizeBytes: number; lastUsedAt: string }> }>
      expect(listed).toHaveLength(1)
      expect(listed[0]).toMatchObject({ name: 'mini', kind: 'minimal' })
      expect(listed[0]!.sizeBytes).toBeGreaterThan(5_000_000)
      expect(listed[0]!.snapshots).toHaveLength(1)
      expect(listed[0]!.snapshots[0]!.sizeBytes).toBeGreaterThan(10_000_000)
      expect(Date.now() - Date.parse(listed[0]!.snapshots[0]!.lastUsedAt)).toBeLessThan(10 * 60_000)
      expect((await cli(['image', 'ls'], env)).stdout).toMatch(/^NAME\s+KIND\s+SIZE\s+BUILT\s+SNAPSHOTS\nmini\s+minimal\s+\d+ MB\s+.* ago\s+\d+ MB \(used .* ago\)\n$/)

      const doctor = JSON.parse((await cli(['doctor', '--provider', 'qemu', '--json'], { ...env, VM_POOL_PROVIDER_OPTIONS: '{"image":"mini"}' })).stdout) as Array<{ details: Record<string, string> }>
      expect(doctor[0]!.details.images).toMatch(/^mini \(minimal, \d+ MB, 1 snapshot\)$/)

      const refused = await cli(['image', 'rm', 'mini'], env)
      expect(refused.code).toBe(2)
      expect(refused.stderr).toMatch(/image mini is in use by running VMs: img-rm-test/)
      expect(existsSync(join(imageDir, 'mini', 'manifest.json'))).toBe(true)
      const forced = await cli(['image', 'rm', 'mini', '--force'], env)
      expect(forced.stdout).toMatch(/^removed image mini \(\d+ MB, with 1 snapshot\)\n$/)
      expect(readdirSync(imageDir).filter((entry) => !entry.endsWith('.lock'))).toEqual(['.snapshots'])
      expect(readdirSync(join(imageDir, '.snapshots')).filter((entry) => !entry.endsWith('.lock'))).toEqual([])
    } finally {
      await qemu.cleanup()
    }
  }, QEMU_TEST_CREATE_TIMEOUT_MS * 2)
})
