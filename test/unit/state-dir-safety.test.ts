/**
 * A state dir (or its leases/, reapers/, qemu/, fake/ folder) that someone else owns or can write is refused:
 * whoever can write there could plant a lease or a VM record that a pool adopts.
 */
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { getStateDir } from '../../src/util/state-dir.js'
import { runBin } from '../../fixtures/pool/harness.js'

describe('state dir safety', () => {
  const made: string[] = []
  const makeDir = () => {
    const dir = mkdtempSync(join(tmpdir(), 'vm-pool-state-safety-'))
    made.push(dir)
    return dir
  }
  afterEach(() => {
    for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true })
  })

  const refusal = (dir: string) => {
    try {
      getStateDir(dir)
    } catch (error) {
      expect(isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS')).toBe(true)
      return (error as Error).message
    }
    return undefined
  }

  test('our own 0700 (or 0755) dirs, and dirs that do not exist yet, are used', () => {
    const dir = makeDir()
    expect(getStateDir(dir)).toBe(dir)
    mkdirSync(join(dir, 'leases'), { mode: 0o755 })
    chmodSync(join(dir, 'leases'), 0o755)
    expect(getStateDir(undefined, { VM_POOL_STATE_DIR: dir })).toBe(dir)
    expect(getStateDir(join(dir, 'not-yet'))).toBe(join(dir, 'not-yet'))
  })

  test.each([
    ['the state dir', '', 0o777, /state dir .*: it is writable by group and others \(mode 0777\), so someone else could plant/],
    ['leases/', 'leases', 0o775, /state dir .*\/leases: it is writable by group \(mode 0775\)/],
    ['reapers/', 'reapers', 0o703, /state dir .*\/reapers: it is writable by others \(mode 0703\)/],
    ['qemu/', 'qemu', 0o1777, /state dir .*\/qemu: it is writable by group and others \(mode 1777\)/],
    ['fake/', 'fake', 0o770, /state dir .*\/fake: it is writable by group \(mode 0770\)/],
  ])('%s writable by group or others is refused, saying why and what to do', (_, sub, mode, message) => {
    const dir = makeDir()
    if (sub) mkdirSync(join(dir, sub))
    chmodSync(join(dir, sub), mode)
    const text = refusal(dir)
    expect(text).toMatch(message)
    expect(text).toContain('hint: use a folder of your own that only you can write')
  })

  test('a folder owned by another user is refused (as root: a dir chowned to another uid; otherwise a root-owned dir)', () => {
    const dir = makeDir()
    if (process.getuid!() === 0) {
      mkdirSync(join(dir, 'leases'), { mode: 0o700 })
      chownSync(join(dir, 'leases'), 4242, 4242)
      expect(refusal(dir)).toMatch(/state dir .*\/leases: it is owned by uid 4242, not by this user \(uid 0\)/)
    } else {
      expect(refusal('/usr')).toMatch(/state dir \/usr: it is owned by uid 0, not by this user/)
    }
  })

  test('a symlink is judged by the folder it points to', () => {
    const dir = makeDir()
    const shared = join(dir, 'shared')
    mkdirSync(shared)
    chmodSync(shared, 0o777)
    mkdirSync(join(dir, 'state'), { mode: 0o700 })
    symlinkSync(shared, join(dir, 'state', 'fake'))
    expect(refusal(join(dir, 'state'))).toMatch(/\/state\/fake: it is writable by group and others \(mode 0777\)/)
  })

  test('the lease store, the providers and the CLI all refuse it (exit 2, no stack)', async () => {
    const dir = makeDir()
    mkdirSync(join(dir, 'leases'))
    chmodSync(join(dir, 'leases'), 0o777)
    const provider = fakeProvider({ stateDir: dir })
    expect(() => new FileLeaseStore({ provider, stateDir: dir })).toThrow(/refusing to use the state dir .*leases/)
    await expect(provider.list()).rejects.toThrow(/refusing to use the state dir .*leases/)
    const ls = runBin(['ls', '--provider', 'fake'], { VM_POOL_STATE_DIR: dir })
    expect(ls.code).toBe(2)
    expect(ls.stderr).toMatch(/^\[vm-pool\] refusing to use the state dir .*\/leases: it is writable by group and others \(mode 0777\)/)
    expect(ls.stderr).not.toMatch(/\n\s+at /)
  })
})
