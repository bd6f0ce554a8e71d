/**
 * How the QEMU provider recognizes its QEMU processes by command line (src/providers/qemu/qemu-process-scan.ts),
 * against real processes whose argv imitates QEMU's: only an exact `-name` + `-pidfile` match counts, and
 * a process that is gone (or whose pid now runs something else) is never reported.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { findQemuByCommandLine, findVmQemuProcesses, identifyQemu, parseQemuCommandLine } from '../../src/providers/qemu/qemu-process-scan.js'
import { getProcessStartTime, isPidAlive } from '../../src/util/process-info.js'

describe('parseQemuCommandLine', () => {
  test.each([
    [['qemu', '-name', 'vm-pool-a', '-pidfile', '/s/qemu/a/qemu.pid'], { name: 'a', pidFile: '/s/qemu/a/qemu.pid' }],
    [['qemu', '-pidfile', '/p', '-m', '256', '-name', 'vm-pool-snapshot-x'], { name: 'snapshot-x', pidFile: '/p' }],
    [['qemu', '-name', 'other-a', '-pidfile', '/p'], undefined],
    [['qemu', '-name', 'vm-pool-a'], undefined],
    [['qemu', '-pidfile', '/p'], undefined],
    [['qemu', '-name'], undefined],
  ])('%j', (argv, expected) => {
    expect(parseQemuCommandLine(argv)).toEqual(expected)
  })
})

/** The `sh` and its `sleep`, by the group this test started them in. */
function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL')
  } catch {
    // already gone
  }
}

describe('finding processes by command line', () => {
  const root = join(mkdtempSync(join(tmpdir(), 'vmp-scan-')), 'qemu')
  const children: ChildProcess[] = []
  /** A real process whose /proc cmdline carries `argv` (`sh -c 'sleep 600; :' sh ARGV...`). */
  const start = async (...argv: string[]): Promise<number> => {
    // Its own process group, so the cleanup ends the `sleep` too.
    const child = spawn('sh', ['-c', 'sleep 600; :', 'sh', ...argv], { stdio: 'ignore', detached: true })
    children.push(child)
    const pid = child.pid!
    // Until `sleep` runs: between sh's fork and the exec, its child still carries the same argv (a second match).
    const sleeping = () => {
      try {
        return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
          .trim()
          .split(' ')
          .some((child) => child !== '' && readFileSync(`/proc/${child}/cmdline`, 'utf8').startsWith('sleep\0'))
      } catch {
        return false
      }
    }
    for (let i = 0; i < 250 && !sleeping(); i++) await new Promise((resolve) => setTimeout(resolve, 20))
    return pid
  }
  afterAll(() => {
    for (const child of children) killGroup(child.pid!)
    rmSync(join(root, '..'), { recursive: true, force: true })
  })

  test('identifyQemu: the exact -name and -pidfile give the identity with its start time; anything else, nothing', async () => {
    const pidFile = join(root, 'vm-a', 'qemu.pid')
    const pid = await start('-name', 'vm-pool-vm-a', '-pidfile', pidFile)
    expect(identifyQemu(pid, { name: 'vm-a', pidFile })).toMatchObject({ pid, name: 'vm-a', pidFile, startTime: getProcessStartTime(pid) })
    expect(identifyQemu(pid, { name: 'vm-b', pidFile })).toBeUndefined()
    expect(identifyQemu(pid, { name: 'vm-a', pidFile: join(root, 'vm-b', 'qemu.pid') })).toBeUndefined()
    expect(identifyQemu(process.pid, { name: 'vm-a', pidFile })).toBeUndefined()
    expect(findQemuByCommandLine({ name: 'vm-a', pidFile }).map((ref) => ref.pid)).toEqual([pid])
    killGroup(pid)
    for (let i = 0; i < 100 && isPidAlive(pid); i++) await new Promise((resolve) => setTimeout(resolve, 20))
    expect(identifyQemu(pid, { name: 'vm-a', pidFile })).toBeUndefined()
    expect(findQemuByCommandLine({ name: 'vm-a', pidFile })).toEqual([])
  })

  test('findVmQemuProcesses: VMs of this root only; templates, other roots, disagreeing names and invalid names are left out', async () => {
    const vm = await start('-name', 'vm-pool-vm-c', '-pidfile', join(root, 'vm-c', 'qemu.pid'))
    await start('-name', 'vm-pool-snapshot-s', '-pidfile', join(root, '..', 'snapshots', 's', 'template', 'qemu.pid'))
    await start('-name', 'vm-pool-vm-d', '-pidfile', join(tmpdir(), 'elsewhere', 'qemu', 'vm-d', 'qemu.pid'))
    await start('-name', 'vm-pool-vm-e', '-pidfile', join(root, 'vm-f', 'qemu.pid'))
    await start('-name', 'vm-pool-Bad_Name', '-pidfile', join(root, 'Bad_Name', 'qemu.pid'))
    expect(findVmQemuProcesses(root).map((ref) => [ref.pid, ref.name])).toEqual([[vm, 'vm-c']])
  })
})
