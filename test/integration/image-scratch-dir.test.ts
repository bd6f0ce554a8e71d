/**
 * A killed Debian build can leave mmdebstrap's mounts in its scratch dir, one of them a bind of the
 * host's /dev/shm: removing that dir must unmount first, never delete through a mount. Real mounts
 * (root only: the Debian image build needs root anyway, and CI runs as root).
 */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { getMountsUnder, removeScratchDir } from '../../src/providers/qemu/images/scratch-dir.js'

const isRoot = process.getuid?.() === 0
if (!isRoot && process.env.CI === 'true') throw new Error('CI must run the scratch dir test as root')

describe('removing a build scratch dir', () => {
  const base = mkdtempSync(join(tmpdir(), 'vmp-scratch-'))
  afterAll(() => {
    for (const point of isRoot ? execFileSync('sh', ['-c', `grep -o ' ${base}[^ ]*' /proc/self/mounts || true`], { encoding: 'utf8' }).split('\n').map((line) => line.trim()).filter(Boolean).reverse() : []) {
      execFileSync('umount', ['--lazy', point])
    }
    rmSync(base, { recursive: true, force: true })
  })

  test('mount points below a dir are read from the mounts file, octal escapes decoded, deepest first', async () => {
    const mounts = join(base, 'mounts')
    writeFileSync(mounts, ['proc /proc proc rw 0 0', `tmpfs ${base}/x/root/dev/shm tmpfs rw 0 0`, `proc ${base}/x/root/proc proc ro 0 0`, `tmpfs ${base}/x\\040y/root tmpfs rw 0 0`, `tmpfs ${base}/xy tmpfs rw 0 0`, ''].join('\n'))
    expect(await getMountsUnder(join(base, 'x'), mounts)).toEqual([`${base}/x/root/dev/shm`, `${base}/x/root/proc`])
    expect(await getMountsUnder(join(base, 'x y'), mounts)).toEqual([`${base}/x y/root`])
  })

  test.skipIf(!isRoot)(`a bind mount of a host dir below the scratch dir is unmounted, not emptied; then the dir goes${isRoot ? '' : ' (skipped: mounting needs root)'}`, async () => {
    const host = join(base, 'host-shm')
    mkdirSync(host)
    writeFileSync(join(host, 'PostgreSQL.1234'), 'somebody else\'s shared memory')
    const scratch = join(base, '.build-debian-12-99999-abcdef12')
    const shm = join(scratch, 'root', 'dev', 'shm')
    const proc = join(scratch, 'root', 'proc')
    mkdirSync(shm, { recursive: true })
    mkdirSync(proc, { recursive: true })
    execFileSync('mount', ['--bind', host, shm])
    execFileSync('mount', ['-t', 'proc', '-o', 'ro', 'proc', proc])
    expect(await getMountsUnder(scratch)).toEqual([shm, proc])
    await removeScratchDir(scratch)
    expect(existsSync(scratch)).toBe(false)
    expect(await getMountsUnder(scratch)).toEqual([])
    expect(existsSync(join(host, 'PostgreSQL.1234'))).toBe(true)
  })
})
