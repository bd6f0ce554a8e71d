/**
 * `vm-pool gc` as users run it: the built bin, real holder processes, a fake-provider state dir.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import type { GcReport } from '../../src/pool/garbage-collector.js'
import { killFixtures, makeStateDir, runBin, spawnFixture } from '../../fixtures/pool/harness.js'

describe('vm-pool gc (the built bin)', () => {
  let state: ReturnType<typeof makeStateDir>
  const sleepers: ChildProcess[] = []
  afterEach(() => {
    killFixtures()
    for (const sleeper of sleepers.splice(0)) sleeper.kill('SIGKILL')
    state?.dispose()
  })

  const gc = (...args: string[]) => runBin(['gc', '--provider', 'fake', ...args], { VM_POOL_STATE_DIR: state.dir })
  const names = async () => (await fakeProvider({ stateDir: state.dir }).list()).map((info) => info.name).sort()

  /** One live holder, one SIGKILLed holder; no watchdogs, so only gc can clean up. */
  const liveAndDeadHolders = async () => {
    state = makeStateDir()
    const live = spawnFixture('holder.mjs', { stateDir: state.dir, keys: ['a'], reaper: false })
    const dead = spawnFixture('holder.mjs', { stateDir: state.dir, keys: ['b'], reaper: false })
    const liveReady = await live.message((m) => m.ready === true, 'ready')
    const deadReady = await dead.message((m) => m.ready === true, 'ready')
    dead.child.kill('SIGKILL')
    await dead.exited
    return { liveVm: (liveReady.leases as Record<string, string>).a!, livePid: live.pid, deadVm: (deadReady.leases as Record<string, string>).b!, deadPid: dead.pid }
  }

  test('keeps a live holder\'s VM and deletes a dead holder\'s, saying why', async () => {
    const { liveVm, livePid, deadVm, deadPid } = await liveAndDeadHolders()
    const { code, stdout } = gc()
    expect(code).toBe(0)
    expect(stdout).toMatch(new RegExp(`^deleted +${deadVm} +holder pid ${deadPid} is gone`, 'm'))
    expect(stdout).toMatch(new RegExp(`^kept +${liveVm} +leased by live pid ${livePid} on `, 'm'))
    expect(await names()).toEqual([liveVm])
    const table = await new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir }).read()
    expect(Object.keys(table)).toEqual([liveVm])
  }, 60_000)

  test('--dry-run deletes nothing and says what it would delete', async () => {
    const { liveVm, deadVm } = await liveAndDeadHolders()
    const before = await new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir }).read()
    const { code, stdout } = gc('--dry-run')
    expect(code).toBe(0)
    expect(stdout).toMatch(new RegExp(`^would delete +${deadVm}`, 'm'))
    expect(stdout).toContain('dry run: nothing was deleted')
    expect(await names()).toEqual([liveVm, deadVm].sort())
    const after = await new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir }).read()
    expect(after).toEqual(before)
  }, 60_000)

  test('pytest-worker-<pid>-<unix time> names are judged by that pid and its start time', async () => {
    state = makeStateDir()
    const sleeper = spawn('sleep', ['600'], { stdio: 'ignore' })
    sleepers.push(sleeper)
    const exited = spawnSync('true')
    const deadPid = exited.pid!
    const now = Math.floor(Date.now() / 1000) + 1
    const provider = fakeProvider({ stateDir: state.dir })
    const alive = `pytest-worker-${sleeper.pid}-${now}`
    // The same live pid, but the name is older than the process: the pid was reused since.
    const reused = `pytest-worker-${sleeper.pid}-${now - 3600}`
    const dead = `pytest-worker-${deadPid}-${now}`
    const orphan = 'test-vm-orphan'
    const foreign = 'my-dev-vm'
    for (const name of [alive, reused, dead, orphan, foreign]) await provider.create({ name })

    const { code, stdout } = gc('--json')
    expect(code).toBe(0)
    const report = JSON.parse(stdout) as GcReport
    expect(report.kept.map((d) => d.name)).toEqual([alive])
    expect(report.kept[0]!.reason).toBe(`pytest worker pid ${sleeper.pid} is alive`)
    const reasons = Object.fromEntries(report.deleted.map((d) => [d.name, d.reason]))
    expect(reasons).toEqual({
      [reused]: `pid ${sleeper.pid} is alive but started after the VM was named: the pid was reused`,
      [dead]: `pytest worker pid ${deadPid} is gone`,
      [orphan]: 'no lease: no live vm-pool process holds it',
    })
    expect(report.ignored).toBe(1)
    expect(await names()).toEqual([foreign, alive].sort())
  }, 60_000)

  test('healthy idle warm VMs stay unless --all; --older-than and --prefix narrow and widen the sweep', async () => {
    state = makeStateDir()
    const holder = spawnFixture('holder.mjs', { stateDir: state.dir, keys: ['w'], releaseWarm: ['w'], keepWarm: { ttlMs: 600_000, max: 2 }, reaper: false })
    const warm = ((await holder.message((m) => m.ready === true, 'ready')).leases as Record<string, string>).w!
    holder.send({ cmd: 'drain' })
    await holder.exited
    const provider = fakeProvider({ stateDir: state.dir })
    await provider.create({ name: 'custom-leftover' })
    await provider.create({ name: 'vitest-fresh-young-1' })

    let { code, stdout } = gc('--older-than', '30m')
    expect(code).toBe(0)
    expect(stdout).toMatch(new RegExp(`^kept +${warm} +healthy idle warm VM`, 'm'))
    expect(stdout).toMatch(/^kept +vitest-fresh-young-1 +younger than --older-than/m)
    expect(await names()).toEqual(['custom-leftover', 'vitest-fresh-young-1', warm].sort())

    ;({ code, stdout } = gc('--prefix', 'custom'))
    expect(code).toBe(0)
    expect(stdout).toMatch(/^deleted +custom-leftover +no lease/m)
    expect(stdout).toMatch(/^deleted +vitest-fresh-young-1 +no lease/m)
    expect(await names()).toEqual([warm])

    ;({ code, stdout } = gc('--all'))
    expect(code).toBe(0)
    expect(stdout).toMatch(new RegExp(`^deleted +${warm} +idle warm VM \\(--all\\)`, 'm'))
    expect(await names()).toEqual([])
  }, 60_000)

  test('a dead holder whose watchdog died too: gc finishes the job from its reaper marker, custom prefix included', async () => {
    state = makeStateDir()
    const holder = spawnFixture('holder.mjs', { stateDir: state.dir, keys: ['a'], prefix: 'my-custom' })
    const ready = await holder.message((m) => m.ready === true, 'ready')
    const vm = (ready.leases as Record<string, string>).a!
    process.kill(ready.reaperPid as number, 'SIGKILL')
    holder.child.kill('SIGKILL')
    await holder.exited
    expect(await names()).toEqual([vm])
    const markers = () => readdirSync(join(state.dir, 'reapers')).filter((file) => file.endsWith('.json'))
    expect(markers()).toHaveLength(1)

    const { code, stdout } = gc()
    expect(code).toBe(0)
    expect(stdout).toMatch(new RegExp(`^deleted +${vm} +holder pid ${holder.pid} is gone \\(from its reaper marker\\)`, 'm'))
    expect(await names()).toEqual([])
    expect(markers()).toEqual([])
  }, 60_000)

  test("the lease file deleted under a live holder: gc keeps the VMs its reaper marker names (never 'no lease')", async () => {
    state = makeStateDir()
    const holder = spawnFixture('holder.mjs', { stateDir: state.dir, keys: ['a', 'b'], fresh: 1 })
    const ready = await holder.message((m) => m.ready === true, 'ready')
    const held = [...Object.values(ready.leases as Record<string, string>), ...(ready.fresh as string[])].sort()
    rmSync(join(state.dir, 'leases', 'fake.json'))

    const { code, stdout } = gc('--json')
    expect(code).toBe(0)
    const report = JSON.parse(stdout) as GcReport
    expect(report.deleted).toEqual([])
    expect(report.kept.map((d) => d.name).sort()).toEqual(held)
    for (const decision of report.kept) expect(decision.reason).toMatch(new RegExp(`^held by live pid ${holder.pid} on .*: named by its reaper marker$`))
    expect(await names()).toEqual(held)
    // The holder still owns them: it drains them as usual (and put its entries back on its first update).
    holder.send({ cmd: 'drain' })
    const drained = await holder.message((m) => m.drained === true, 'drained')
    expect((drained.result as { deleted: string[]; leaked: string[] }).leaked).toEqual([])
    expect(await names()).toEqual([])
  }, 60_000)

  test('--help, and bad usage exits 2', () => {
    state = makeStateDir()
    const help = gc('--help')
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('Usage: vm-pool gc')
    expect(help.stdout).toContain('pytest-worker-')
    const bad = gc('--older-than', 'soon')
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('invalid --older-than "soon"')
  })
})
