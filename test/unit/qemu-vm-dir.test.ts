/**
 * The QEMU VM dir (src/providers/qemu/qemu-vm-dir.ts) on a real temp dir: its JSON files are read through
 * their schemas (a wrong file is refused or ignored, never trusted), a reset's file removal keeps what
 * the VM needs, and the monitor socket's path length is checked.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { listVmDirNames, MAX_UNIX_SOCKET_PATH_BYTES, QemuVmDir, VM_DIR_FILES } from '../../src/providers/qemu/qemu-vm-dir.js'
import type { VmRecord } from '../../src/providers/vm-provider.js'

const record: VmRecord = {
  name: 'vm-a',
  provider: 'qemu',
  createdAt: '2026-01-01T00:00:00.000Z',
  spec: { name: 'vm-a', labels: { team: 'x' } },
  data: { host: '127.0.0.1', port: 2222, username: 'root', hostKey: 'ssh-ed25519 AAAA', keyPath: '/k', vmDir: '/d', pid: 42, accel: 'tcg', image: '/i', bootMs: 900 },
}

describe('QemuVmDir', () => {
  let root: string
  let dir: QemuVmDir
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'vmp-dir-'))
    dir = QemuVmDir.of(root, 'vm-a')
    mkdirSync(dir.dir)
  })
  afterEach(() => rmSync(root, { recursive: true, force: true }))

  test('every file name comes from one list; the command line a QEMU of this dir has is its name and pid file', () => {
    expect(dir.path('record')).toBe(join(root, 'vm-a', 'record.json'))
    expect(Object.keys(VM_DIR_FILES).map((file) => dir.path(file as keyof typeof VM_DIR_FILES))).toEqual(Object.values(VM_DIR_FILES).map((file) => join(root, 'vm-a', file)))
    expect(dir.commandLine()).toEqual({ name: 'vm-a', pidFile: join(root, 'vm-a', 'qemu.pid') })
  })

  test('record.json: written and read back; missing is undefined; a record of another shape is refused with what is wrong', async () => {
    expect(await dir.readRecord()).toBeUndefined()
    await dir.writeRecord(record)
    expect(await dir.readRecord()).toEqual(record)
    writeFileSync(dir.path('record'), JSON.stringify({ ...record, data: { ...record.data, port: 'x' } }))
    const wrong = await dir.readRecord().catch((error: unknown) => error)
    expect(isVmPoolError(wrong, 'VMPOOL_VM_NOT_FOUND')).toBe(true)
    expect((wrong as Error).message).toMatch(/record\.json is not a QEMU VM record: .*port/)
    writeFileSync(dir.path('record'), '{"half')
    expect((await dir.readRecord().catch((error: unknown) => error) as Error).message).toMatch(/record\.json is not JSON/)
  })

  test('record.json keeps fields a newer vm-pool added', async () => {
    const newer = { ...record, data: { ...record.data, future: 'field' }, extra: 1 }
    writeFileSync(dir.path('record'), JSON.stringify(newer))
    expect(await dir.readRecord()).toEqual(newer)
  })

  test('process.json: read through its schema; a wrong or unreadable one counts as absent', async () => {
    expect(await dir.readProcess()).toBeUndefined()
    const identity = { pid: 1234, host: 'h', startTime: 99, port: 2222, accel: 'tcg' as const }
    await dir.writeProcess(identity)
    expect(await dir.readProcess()).toEqual(identity)
    writeFileSync(dir.path('process'), JSON.stringify({ ...identity, pid: 'not a pid' }))
    expect(await dir.readProcess()).toBeUndefined()
    writeFileSync(dir.path('process'), 'garbage')
    expect(await dir.readProcess()).toBeUndefined()
  })

  test('qemu.pid: a positive integer or nothing', async () => {
    expect(await dir.readPidFile()).toBeUndefined()
    writeFileSync(dir.path('pid'), '4321\n')
    expect(await dir.readPidFile()).toBe(4321)
    for (const junk of ['', 'abc', '-5', '0', '1.5']) {
      writeFileSync(dir.path('pid'), junk)
      expect(await dir.readPidFile()).toBeUndefined()
    }
  })

  test('removeInstanceFiles drops what one QEMU run left and keeps the key, the record and known_hosts', async () => {
    for (const file of Object.values(VM_DIR_FILES)) writeFileSync(join(dir.dir, file), 'x')
    await dir.removeInstanceFiles()
    expect(readdirSync(dir.dir).sort()).toEqual(['client_key', 'known_hosts', 'record.json'])
  })

  test('known_hosts pins the host key under the alias', async () => {
    await dir.writeKnownHosts('vm-pool-vm-a', 'ssh-ed25519 AAAAC3Nz comment\n')
    expect(existsSync(dir.path('knownHosts'))).toBe(true)
    expect(readFileSync(dir.path('knownHosts'), 'utf8')).toBe('vm-pool-vm-a ssh-ed25519 AAAAC3Nz comment\n')
  })

  test('a monitor socket path over sun_path is refused before QEMU runs, with the hint given', () => {
    expect(() => dir.assertSocketPathFits({ vm: 'vm-a', hint: 'use a shorter stateDir' })).not.toThrow()
    const deep = new QemuVmDir(join(root, 'x'.repeat(MAX_UNIX_SOCKET_PATH_BYTES)), 'vm-a')
    const error = (() => {
      try {
        deep.assertSocketPathFits({ vm: 'vm-a', hint: 'use a shorter stateDir' })
      } catch (caught) {
        return caught
      }
    })()
    expect(isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS')).toBe(true)
    expect((error as Error).message).toMatch(/too long .*over 107 bytes[\s\S]*hint: use a shorter stateDir/)
  })

  test('listVmDirNames: directories with valid VM names only, sorted; a missing root is empty', async () => {
    mkdirSync(join(root, 'vm-b'))
    mkdirSync(join(root, 'Not_A_Name'))
    writeFileSync(join(root, 'accel-probe.json'), '{}')
    expect(await listVmDirNames(root)).toEqual(['vm-a', 'vm-b'])
    expect(await listVmDirNames(join(root, 'nope'))).toEqual([])
  })
})
