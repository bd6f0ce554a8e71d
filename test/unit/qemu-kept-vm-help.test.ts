/**
 * What the QEMU provider tells a person about a kept VM (`describe`, src/providers/qemu/kept-vm-help.ts)
 * and which failed restores count as proof that a snapshot is broken (snapshot-restore-strategy.ts).
 * The ssh and remove lines are run against a real VM in test/integration/qemu-provider.test.ts.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { VmPoolError, VmPoolTimeoutError } from '../../src/errors.js'
import { describeQemuVm, getQemuShellCommand, isPublicKeyLine } from '../../src/providers/qemu/kept-vm-help.js'
import { judgeRestoreFailure } from '../../src/providers/qemu/snapshot-restore-strategy.js'
import type { VmRecord } from '../../src/providers/vm-provider.js'

describe('describe(record) for qemu', () => {
  const base = mkdtempSync(join(tmpdir(), "vmp help 'quoted' "))
  const vmDir = join(base, 'qemu', 'kept-1')
  mkdirSync(vmDir, { recursive: true })
  afterAll(() => rmSync(base, { recursive: true, force: true }))
  const record: VmRecord = {
    name: 'kept-1',
    provider: 'qemu',
    createdAt: '2026-01-01T00:00:00.000Z',
    spec: { name: 'kept-1' },
    data: { host: '127.0.0.1', port: 40123, username: 'root', hostKey: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPyI', keyPath: join(vmDir, 'client_key'), vmDir, pid: 4242, accel: 'tcg', image: '/img' },
  }

  test('with the pinned key file: ssh with key path, port, user@127.0.0.1, checking the host key under its alias', () => {
    writeFileSync(join(vmDir, 'known_hosts'), 'vm-pool-kept-1 ssh-ed25519 AAAA\n')
    const { reach } = describeQemuVm(record)
    const keyArg = `'${join(vmDir, 'client_key').replaceAll("'", `'\\''`)}'`
    expect(reach).toBe(`ssh -i ${keyArg} -p 40123 -o IdentitiesOnly=yes -o BatchMode=yes -o HostKeyAlias=vm-pool-kept-1 -o 'UserKnownHostsFile=${join(vmDir, 'known_hosts').replaceAll("'", `'\\''`)}' -o StrictHostKeyChecking=yes root@127.0.0.1`)
  })

  test('without it (a VM from an older vm-pool): no host key check and no known_hosts noise', () => {
    rmSync(join(vmDir, 'known_hosts'), { force: true })
    expect(describeQemuVm(record).reach).toMatch(/ -o StrictHostKeyChecking=no -o UserKnownHostsFile=\/dev\/null -o LogLevel=ERROR root@127\.0\.0\.1$/)
  })

  test('remove: kill the pid in qemu.pid only if its command line names that pid file, then remove the dir', () => {
    const quoted = (path: string) => `'${path.replaceAll("'", `'\\''`)}'`
    const pidFile = quoted(join(vmDir, 'qemu.pid'))
    expect(describeQemuVm(record).remove).toBe(`pid=$(cat ${pidFile} 2>/dev/null) && grep -qF -- ${pidFile} "/proc/$pid/cmdline" 2>/dev/null && kill "$pid"; rm -rf -- ${quoted(vmDir)}`)
  })

  test('vm-pool ssh: the same ssh with -t for a shell; a command goes to the guest as one quoted line after --', () => {
    writeFileSync(join(vmDir, 'known_hosts'), 'vm-pool-kept-1 ssh-ed25519 AAAA\n')
    const base = ['ssh', '-i', join(vmDir, 'client_key'), '-p', '40123', '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-o', 'HostKeyAlias=vm-pool-kept-1', '-o', `UserKnownHostsFile=${join(vmDir, 'known_hosts')}`, '-o', 'StrictHostKeyChecking=yes']
    expect(getQemuShellCommand(record)).toEqual({ argv: [...base, '-t', 'root@127.0.0.1'] })
    expect(getQemuShellCommand(record, ['ls', '-la', "it's here"])).toEqual({ argv: [...base, '--', 'root@127.0.0.1', `ls -la 'it'\\''s here'`] })
  })

  test('a record that is not a qemu record is refused', () => {
    expect(() => describeQemuVm({ ...record, data: { id: 'x' } })).toThrow(/not a qemu VM record/)
  })

  test('only a public key line can be pinned in known_hosts', () => {
    expect(isPublicKeyLine('ssh-ed25519 AAAAC3Nz comment')).toBe(true)
    expect(isPublicKeyLine('ecdsa-sha2-nistp256 AAAAE2')).toBe(true)
    expect(isPublicKeyLine('SHA256:abcdef')).toBe(false)
  })
})

describe('judgeRestoreFailure: only a restore proven broken invalidates a snapshot', () => {
  const timeout = new VmPoolTimeoutError({ code: 'VMPOOL_BOOT_TIMEOUT', provider: 'qemu', timeoutName: 'RESTORE_TIMEOUT_MS', timeoutMs: 60_000, message: 'timed out after 60000 ms waiting for SSH' })
  const cases: Array<[string, unknown, boolean, boolean]> = [
    ['a boot timeout (a busy machine)', timeout, false, false],
    ['a boot timeout, but QEMU had exited', timeout, true, true],
    ['QEMU rejected the state while loading', new VmPoolError({ code: 'VMPOOL_SNAPSHOT_INVALID', message: 'QEMU exited while loading the saved guest state' }), true, true],
    ['a wrong state after loading', new VmPoolError({ code: 'VMPOOL_SNAPSHOT_INVALID', message: 'the restored guest is in state "shutdown"' }), false, true],
    ['another host key answered', new VmPoolError({ code: 'VMPOOL_HOST_KEY_MISMATCH', message: 'host key mismatch' }), false, true],
    ['the key was refused', new VmPoolError({ code: 'VMPOOL_AUTH_FAILED', message: 'auth failed' }), false, true],
    ['QEMU did not start at all (no port)', new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', message: 'QEMU failed to start (exit code 1)' }), false, false],
    ['QEMU exited before its pid could be read', new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', message: 'QEMU exited right after it started (while loading the saved guest state)', details: { qemuExited: true } }), false, true],
    ['the guest died after it resumed', new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', message: 'QEMU exited while the guest was booting' }), true, true],
  ]
  test.each(cases)('%s', (_what, error, qemuExited, broken) => {
    const reason = judgeRestoreFailure(error, { qemuExited })
    expect(reason !== undefined).toBe(broken)
    if (reason) expect(reason).toContain((error as VmPoolError).shortMessage)
  })
})
