/**
 * The built CLI (`node dist/cli/main.js`, as users run it): `image build` builds once and then reuses
 * its cache; `doctor` reports qemu usable with the built image and explains why not without one.
 */
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, test } from 'vitest'
import { getImageDir } from '../../src/providers/qemu/qemu-image.js'
import { getQemuSkipReason } from '../helpers/qemu.js'

const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js')
const distMissing = existsSync(CLI) ? undefined : `${CLI} is missing (run npm run build)`
if (distMissing && process.env.CI === 'true') throw new Error(distMissing)
const skipReason = distMissing ?? getQemuSkipReason()

interface CliResult {
  code: number
  stdout: string
  stderr: string
  ms: number
}

async function cli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const started = performance.now()
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, timeout: 300_000 })
    return { code: 0, stdout, stderr, ms: performance.now() - started }
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string }
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr, ms: performance.now() - started }
  }
}

describe.skipIf(Boolean(skipReason))('vm-pool image / doctor (built CLI)', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'vmp-cli-'))
  afterAll(() => rmSync(scratch, { recursive: true, force: true }))

  test('image build builds once, then reuses the cached image; --force is needed to rebuild', async () => {
    const imageDir = join(scratch, 'images')
    const first = await cli(['image', 'build', '--image-dir', imageDir, '--json'])
    expect(first.code, first.stderr).toBe(0)
    expect(first.stderr).toMatch(/downloading linux-image-/)
    expect(first.stderr).toMatch(/image minimal built in/)
    const built = JSON.parse(first.stdout) as { dir: string; reused: boolean; hostKey: string }
    expect(built).toMatchObject({ dir: join(imageDir, 'minimal'), reused: false })
    const manifest = JSON.parse(readFileSync(join(imageDir, 'minimal', 'manifest.json'), 'utf8')) as { hostKey: string; initrd: string }
    expect(manifest.hostKey).toBe(built.hostKey)
    expect(existsSync(join(imageDir, 'minimal', manifest.initrd))).toBe(true)

    const second = await cli(['image', 'build', '--json'], { VM_POOL_IMAGE_DIR: imageDir })
    expect(second.code, second.stderr).toBe(0)
    expect(second.stderr).toMatch(/is up to date/)
    expect(second.stderr).not.toMatch(/downloading/)
    expect(JSON.parse(second.stdout)).toMatchObject({ dir: join(imageDir, 'minimal'), reused: true, hostKey: built.hostKey })
  }, 300_000)

  test('image: bad usage exits 2 with a pointer to --help', async () => {
    const result = await cli(['image', 'bake'])
    expect(result.code).toBe(2)
    expect(result.stderr).toMatch(/unknown action "bake"/)
  })

  test('doctor: qemu usable with the built image, accel named; every registered provider listed', async () => {
    const result = await cli(['doctor', '--json'], { VM_POOL_STATE_DIR: join(scratch, 'state'), VM_POOL_IMAGE_DIR: getImageDir(), VM_POOL_PROVIDER: 'qemu' })
    expect(result.code, result.stderr).toBe(0)
    const entries = JSON.parse(result.stdout) as Array<{ provider: string; usable: boolean; selected: boolean; details?: Record<string, string> }>
    const qemu = entries.find((entry) => entry.provider === 'qemu')
    expect(qemu).toMatchObject({ usable: true, selected: true })
    expect(['kvm', 'tcg']).toContain(qemu!.details!.accel)
    expect(qemu!.details!.binary).toMatch(/qemu-system-x86_64$/)
    // Other test files share this image dir, so its snapshot may be in any of the three states.
    expect(qemu!.details!.snapshot).toMatch(/^(ready|none yet|stale) in .*\.snapshots\//)
    expect(entries.find((entry) => entry.provider === 'fake')).toMatchObject({ usable: true })
    const off = await cli(['doctor', '--provider', 'qemu'], { VM_POOL_STATE_DIR: join(scratch, 'state'), VM_POOL_IMAGE_DIR: getImageDir(), VM_POOL_PROVIDER: 'qemu', VM_POOL_PROVIDER_OPTIONS: '{"snapshot":false}' })
    expect(off.stdout).toMatch(/^\s+snapshot: off \(snapshot: false\): every VM boots$/m)
  }, 60_000)

  test('doctor: without an image, qemu is not usable, says why and how to fix it, exit 1', async () => {
    const result = await cli(['doctor', '--provider', 'qemu'], { VM_POOL_STATE_DIR: join(scratch, 'state'), VM_POOL_IMAGE_DIR: join(scratch, 'no-images') })
    expect(result.code).toBe(1)
    expect(result.stdout).toMatch(/^qemu\s+NOT usable\s+image "minimal" not found/m)
    expect(result.stdout).toMatch(/hint: .*vm-pool image build/)
    expect((await cli(['doctor', '--provider', 'no-such-provider'])).code).toBe(2)
  }, 60_000)
})
