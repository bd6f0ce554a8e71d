/**
 * launchQemu (src/providers/qemu/qemu-process.ts) against a fixture `qemu` script, for the moment a real
 * QEMU makes hard to hit on purpose: QEMU daemonized (exit 0) and was gone, its pid file deleted, before
 * vm-pool could read its pid (a restore whose saved state QEMU rejects at once). The create must fail
 * saying QEMU exited, with the console, and mark it so the snapshot is judged broken.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { isVmPoolError, type VmPoolError } from '../../src/errors.js'
import type { QemuMachine } from '../../src/providers/qemu/qemu-command.js'
import { launchQemu } from '../../src/providers/qemu/qemu-process.js'
import { QemuVmDir } from '../../src/providers/qemu/qemu-vm-dir.js'
import { judgeRestoreFailure } from '../../src/providers/qemu/snapshot-restore-strategy.js'

describe('launchQemu when QEMU is gone before its pid is read', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'vmp-launch-'))
  afterAll(() => rmSync(scratch, { recursive: true, force: true }))
  const fixture = join(scratch, 'qemu-dies-at-once')
  // Like QEMU that loaded a bad state: writes its console, "daemonizes" (exit 0), and leaves no pid file behind.
  writeFileSync(
    fixture,
    `#!/bin/sh
serial=; previous=
for arg in "$@"; do [ "$previous" = -serial ] && serial=\${arg#file:}; previous=$arg; done
echo 'qemu: load of migration failed: Invalid argument' > "$serial"
exit 0
`,
    { mode: 0o755 },
  )
  const machine = { accel: 'tcg', cpus: 1, memoryMiB: 128, image: { dir: scratch, kernel: join(scratch, 'vmlinuz'), append: 'console=ttyS0' } } as unknown as QemuMachine

  test('fails with VMPOOL_CREATE_FAILED, the console tail and details.qemuExited; a restore counts it as proof of a broken snapshot', async () => {
    const dir = QemuVmDir.of(join(scratch, 'qemu'), 'vm-gone')
    mkdirSync(dir.dir, { recursive: true })
    const error = (await launchQemu({ binary: fixture, machine, dir, vm: 'vm-gone', incoming: 'exec:cat /nonexistent', pathHint: 'shorter' }).catch((e: unknown) => e)) as VmPoolError
    expect(isVmPoolError(error, 'VMPOOL_CREATE_FAILED')).toBe(true)
    expect(error.message).toMatch(/QEMU exited right after it started \(while loading the saved guest state\)/)
    expect(error.message).toContain('load of migration failed')
    expect(error.details).toMatchObject({ qemuExited: true, restore: true })
    expect(judgeRestoreFailure(error, { qemuExited: false })).toMatch(/^QEMU exited: /)
  })
})
