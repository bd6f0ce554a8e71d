/**
 * No QEMU outlives its VM (docs/qemu.md, "Leaks"). The creator of a VM is SIGKILLed at the worst moment:
 * right after QEMU wrote its own pid file, before vm-pool wrote process.json. A stand-in for
 * qemu-system-x86_64 makes that moment exact: it runs the real QEMU (paused with -S, so it costs no CPU)
 * and, once QEMU has daemonized, SIGKILLs the process that started it. Then the pool's watchdog, `delete`,
 * `list` and `vm-pool gc` must still find and end that QEMU; and a pid that now belongs to another
 * program is never killed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { BIN, ensureDistBuilt } from '../../fixtures/pool/harness.js'
import { getProcessStartTime, isPidAlive } from '../../src/util/process-info.js'
import { findOnPath, getQemuSkipReason, livePidsWhere, useQemuTestProvider, type QemuTestProvider } from '../helpers/qemu.js'
import { childEnded } from '../helpers/child-ended.js'

const skipReason = getQemuSkipReason()
const DIST_INDEX = join(import.meta.dirname, '../../dist/index.js')
/** The creator dies within seconds (QEMU starts paused); the watchdog polls every 250 ms. Generous for a busy 2-core machine. */
const LEAK_DEADLINE_MS = 60_000

async function waitUntil(condition: () => boolean, what: string, deadlineMs = LEAK_DEADLINE_MS): Promise<void> {
  const deadline = performance.now() + deadlineMs
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`gave up after ${deadlineMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** Live processes whose `-pidfile` lies under `root` (a provider's `<stateDir>/qemu`). */
const qemuPidsUnder = (root: string) =>
  livePidsWhere((argv) => {
    const at = argv.indexOf('-pidfile')
    return at >= 0 && (argv[at + 1] ?? '').startsWith(`${root}/`)
  })

/** Run `script` (an ES module importing dist/index.js) in a new Node process; resolves with how it ended. */
function runCreator(script: string, args: string[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  const child: ChildProcess = spawn(process.execPath, ['--input-type=module', '-e', script, ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  return childEnded(child).then(({ code, signal }) => ({ code, signal, stderr }))
}

describe.skipIf(Boolean(skipReason))('a QEMU whose creator died before process.json', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'vmp-leak-'))
  const startedLog = join(scratch, 'started-pids')
  const wrapper = join(scratch, 'qemu-then-kill-creator')
  let qemu: QemuTestProvider
  let providerOptions: Record<string, unknown>
  let root: string

  beforeAll(async () => {
    await ensureDistBuilt()
    const realQemu = findOnPath('qemu-system-x86_64')!
    writeFileSync(
      wrapper,
      `#!/bin/sh
# Not the daemonizing start of a VM (--version, the accel probe): the real QEMU, unchanged.
case " $* " in *" -daemonize "*) ;; *) exec ${realQemu} "$@" ;; esac
pidfile=; previous=
for arg in "$@"; do [ "$previous" = -pidfile ] && pidfile=$arg; previous=$arg; done
${realQemu} "$@" -S || exit $?
# QEMU has daemonized and written its pid file: the creator dies before it can write process.json.
cat "$pidfile" >> ${startedLog}
kill -KILL "$PPID"
`,
      { mode: 0o755 },
    )
    qemu = useQemuTestProvider({ qemuBinary: wrapper, snapshot: false, accel: 'tcg' })
    root = join(qemu.stateDir, 'qemu')
    providerOptions = { stateDir: qemu.stateDir, qemuBinary: wrapper, snapshot: false, accel: 'tcg' }
  }, 120_000)

  afterEach(() => rmSync(startedLog, { force: true }))

  afterAll(async () => {
    await qemu?.cleanup()
    // Whatever a failed assertion left: only QEMUs of this test's state dir, by pid.
    if (root) for (const pid of qemuPidsUnder(root)) process.kill(pid, 'SIGKILL')
    rmSync(scratch, { recursive: true, force: true })
  }, 60_000)

  const startedPids = () => (existsSync(startedLog) ? readFileSync(startedLog, 'utf8').split('\n').filter(Boolean).map(Number) : [])

  test("a pool's creator killed in that moment: its watchdog deletes the VM and ends its QEMU", async () => {
    const script = `
      import { createPool, qemuProvider } from ${JSON.stringify(DIST_INDEX)}
      const providerOptions = JSON.parse(process.argv[1])
      const pool = createPool({ provider: qemuProvider(providerOptions), stateDir: providerOptions.stateDir, reaper: { providerName: 'qemu', providerOptions } })
      await pool.fresh()
      process.stderr.write('fresh() returned: the stand-in QEMU did not kill us\\n')`
    const creator = await runCreator(script, [JSON.stringify(providerOptions)])
    expect(creator.signal, creator.stderr).toBe('SIGKILL')
    const [pid] = startedPids()
    expect(pid).toEqual(expect.any(Number))
    await waitUntil(() => !isPidAlive(pid!) && qemuPidsUnder(root).length === 0, `the watchdog to end QEMU pid ${pid}`)
    await waitUntil(() => !existsSync(root) || readdirSync(root).every((entry) => !entry.startsWith('vitest-fresh-')), 'the watchdog to remove the VM dir')
    expect(await qemu.provider.list()).toEqual([])
  }, LEAK_DEADLINE_MS + 60_000)

  test('a create killed in that moment leaves qemu.pid without process.json; delete ends QEMU by that pid file', async () => {
    const name = `test-vm-pidfile-${process.pid}`
    const script = `
      import { qemuProvider } from ${JSON.stringify(DIST_INDEX)}
      await qemuProvider(JSON.parse(process.argv[1])).create({ name: process.argv[2] })`
    const creator = await runCreator(script, [JSON.stringify(providerOptions), name])
    expect(creator.signal, creator.stderr).toBe('SIGKILL')
    const [pid] = startedPids()
    expect(isPidAlive(pid!)).toBe(true)
    expect(existsSync(join(root, name, 'qemu.pid'))).toBe(true)
    expect(existsSync(join(root, name, 'process.json'))).toBe(false)
    expect((await qemu.provider.list()).find((info) => info.name === name)?.state).toBe('starting')
    await qemu.provider.delete(name)
    expect(isPidAlive(pid!)).toBe(false)
    expect(existsSync(join(root, name))).toBe(false)
    expect(await qemu.provider.list()).toEqual([])
  }, 120_000)

  test('a QEMU whose VM dir is gone (removed by an older watchdog) is listed, and `vm-pool gc` ends it', async () => {
    const name = `test-vm-orphan-${process.pid}`
    const script = `
      import { qemuProvider } from ${JSON.stringify(DIST_INDEX)}
      await qemuProvider(JSON.parse(process.argv[1])).create({ name: process.argv[2] })`
    const creator = await runCreator(script, [JSON.stringify(providerOptions), name])
    expect(creator.signal, creator.stderr).toBe('SIGKILL')
    const [pid] = startedPids()
    rmSync(join(root, name), { recursive: true, force: true })
    expect(isPidAlive(pid!)).toBe(true)
    const listed = await qemu.provider.list()
    expect(listed).toEqual([{ name, provider: 'qemu', state: 'unknown', createdAt: expect.any(String) }])
    expect(Date.now() - Date.parse(listed[0]!.createdAt!)).toBeLessThan(10 * 60_000)

    const gc = spawnSync(process.execPath, [BIN, 'gc', '--provider', 'qemu', '--json'], { encoding: 'utf8', env: { ...process.env, VM_POOL_STATE_DIR: qemu.stateDir }, timeout: 120_000 })
    expect(gc.status, gc.stderr).toBe(0)
    expect((JSON.parse(gc.stdout) as { deleted: { name: string }[] }).deleted.map((decision) => decision.name)).toEqual([name])
    expect(isPidAlive(pid!)).toBe(false)
    expect(qemuPidsUnder(root)).toEqual([])
    expect(await qemu.provider.list()).toEqual([])
  }, 180_000)
})

describe('pids that are not (or no longer) our QEMU are never killed', () => {
  let qemu: QemuTestProvider
  const others: ChildProcess[] = []
  /** A long-lived process that is not QEMU; `argv` shows up in its /proc cmdline (`sh -c 'sleep 600; :' sh ARGV...`). */
  const startOther = (...argv: string[]): number => {
    // Its own process group, so the cleanup ends the `sleep` too.
    const child = spawn('sh', ['-c', 'sleep 600; :', 'sh', ...argv], { stdio: 'ignore', detached: true })
    others.push(child)
    return child.pid!
  }

  beforeAll(() => {
    qemu = useQemuTestProvider()
  })

  afterAll(async () => {
    for (const child of others) {
      try {
        process.kill(-child.pid!, 'SIGKILL')
      } catch {
        // already gone
      }
    }
    await qemu?.cleanup()
  })

  test('a VM dir whose process.json and qemu.pid name a pid now used by another program: delete removes the dir, never that program', async () => {
    const root = join(qemu.stateDir, 'qemu')
    const name = 'test-vm-reused-pid'
    const pid = startOther()
    await waitUntil(() => getProcessStartTime(pid) !== null, 'the stand-in process to start', 10_000)
    mkdirSync(join(root, name), { recursive: true })
    // What a dead QEMU left: its pid, since handed to another process (another start time).
    writeFileSync(join(root, name, 'process.json'), JSON.stringify({ pid, host: hostname(), startTime: getProcessStartTime(pid)! - 1, port: 2222, accel: 'tcg' }))
    writeFileSync(join(root, name, 'qemu.pid'), `${pid}\n`)
    expect((await qemu.provider.list()).find((info) => info.name === name)?.state).toBe('dead')
    await qemu.provider.delete(name)
    expect(isPidAlive(pid)).toBe(true)
    expect(existsSync(join(root, name))).toBe(false)
  })

  test("processes that look like QEMU for another state dir, or whose -name and -pidfile disagree, are neither listed nor killed", async () => {
    const root = join(qemu.stateDir, 'qemu')
    const elsewhere = startOther('-name', 'vm-pool-test-vm-elsewhere', '-pidfile', join(tmpdir(), 'not-this-state-dir', 'qemu', 'test-vm-elsewhere', 'qemu.pid'))
    const mismatched = startOther('-name', 'vm-pool-test-vm-a', '-pidfile', join(root, 'test-vm-b', 'qemu.pid'))
    await waitUntil(() => [elsewhere, mismatched].every((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('-pidfile')), 'the stand-ins to start', 10_000)
    expect(await qemu.provider.list()).toEqual([])
    for (const name of ['test-vm-elsewhere', 'test-vm-a', 'test-vm-b']) await qemu.provider.delete(name)
    expect(isPidAlive(elsewhere)).toBe(true)
    expect(isPidAlive(mismatched)).toBe(true)
  })
})
