/**
 * `vm-pool gc` as users run it: the built bin, real holder processes, a fake-provider state dir.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { hostname } from 'node:os'
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
    // Which leases it works on: with VM_POOL_LEASE_STORE set, a user must be able to tell from --help.
    expect(help.stdout).toMatch(/lease file \(in VM_POOL_STATE_DIR\), or\s+the PostgreSQL database in VM_POOL_LEASE_STORE/)
    expect(help.stdout).toMatch(/1 a delete failed or the lease store could not be used/)
    const bad = gc('--older-than', 'soon')
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('invalid --older-than "soon"')
  })

  test('a duration without a unit is bad usage (it was read as milliseconds): gc --older-than, warm --ttl', async () => {
    state = makeStateDir()
    await fakeProvider({ stateDir: state.dir }).create({ name: 'test-vm-old' })
    const bare = gc('--older-than', '30')
    expect(bare.code).toBe(2)
    expect(bare.stderr).toContain('invalid --older-than "30": expected a number with a unit')
    expect(await names()).toEqual(['test-vm-old'])
    const warm = runBin(['warm', '--count', '1', '--provider', 'fake', '--ttl', '30'], { VM_POOL_STATE_DIR: state.dir })
    expect(warm.code).toBe(2)
    expect(warm.stderr).toContain('invalid --ttl "30": expected a number with a unit')
    expect(await names()).toEqual(['test-vm-old'])
    expect(gc('--older-than', '500ms').code).toBe(0)
    expect(await names()).toEqual([])
  })

  test('a listed name that matches a sweep prefix but is no vm-pool name is skipped and reported, not a failure', async () => {
    state = makeStateDir()
    const provider = fakeProvider({ stateDir: state.dir })
    await provider.create({ name: 'vitest-worker-upper' })
    await provider.create({ name: 'vitest-worker-orphan' })
    // What a Firecracker API (or anything else sharing the prefix) can list: no pool could have made this name.
    const dir = join(state.dir, 'fake')
    renameSync(join(dir, 'vitest-worker-upper'), join(dir, 'vitest-worker-UPPER'))
    const recordPath = join(dir, 'vitest-worker-UPPER', 'record.json')
    writeFileSync(recordPath, readFileSync(recordPath, 'utf8').replaceAll('vitest-worker-upper', 'vitest-worker-UPPER'))
    expect(await names()).toEqual(['vitest-worker-UPPER', 'vitest-worker-orphan'])

    for (let round = 0; round < 2; round++) {
      const { code, stdout, stderr } = gc()
      expect(stderr).toBe('')
      expect(code).toBe(0)
      expect(stdout).toMatch(/^skipped +vitest-worker-UPPER +not a vm-pool VM name .*: left alone$/m)
      expect(stdout).toMatch(/, 1 skipped \(not vm-pool names\)$/m)
    }
    expect(await names()).toEqual(['vitest-worker-UPPER'])
    const json = gc('--json')
    expect(json.code).toBe(0)
    const report = JSON.parse(json.stdout) as GcReport
    expect(report.skipped).toEqual([{ name: 'vitest-worker-UPPER', reason: expect.stringContaining('not a vm-pool VM name') }])
    expect(report.failed).toEqual([])
  })

  test('owners on another host: ls marks them, gc keeps them (even --all --older-than) until --assume-dead-host names that host', async () => {
    state = makeStateDir()
    const provider = fakeProvider({ stateDir: state.dir })
    const record = await provider.create({ name: 'vitest-worker-oldci-1' })
    const longAgo = new Date(Date.now() - 40 * 86_400_000).toISOString()
    // What an old CI container that shared this state dir left behind: a lease held by a pid on its host.
    await new FileLeaseStore({ provider, stateDir: state.dir }).update((table) => {
      table[record.name] = { name: record.name, provider: 'fake', specHash: 'x', kind: 'slot', state: 'leased', owner: { pid: 4242, host: 'old-ci-container', startTime: 1 }, runId: 'oldci', key: '1', record, createdAt: longAgo, updatedAt: longAgo }
    })

    const ls = runBin(['ls', '-p', 'fake'], { VM_POOL_STATE_DIR: state.dir })
    expect(ls.code).toBe(0)
    expect(ls.stdout).toMatch(/^vitest-worker-oldci-1 +running +leased +4242@old-ci-container \(other host\) +oldci +40d$/m)
    const rows = JSON.parse(runBin(['ls', '-p', 'fake', '--json'], { VM_POOL_STATE_DIR: state.dir }).stdout) as { owner: unknown }[]
    expect(rows[0]!.owner).toEqual({ pid: 4242, host: 'old-ci-container', alive: true, otherHost: true })

    const kept = gc('--all', '--older-than', '30d')
    expect(kept.code).toBe(0)
    expect(kept.stdout).toMatch(/^kept +vitest-worker-oldci-1 +leased by live pid 4242 on old-ci-container/m)
    expect(await names()).toEqual(['vitest-worker-oldci-1'])

    const self = gc('--assume-dead-host', hostname())
    expect(self.code).toBe(2)
    expect(self.stderr).toContain('is this host: its owners are checked by pid, never assumed dead')

    const other = gc('--assume-dead-host', 'some-other-host', '--older-than', '30d')
    expect(other.stdout).toMatch(/^kept +vitest-worker-oldci-1 /m)
    const young = gc('--assume-dead-host', 'old-ci-container', '--older-than', '60d')
    expect(young.stdout).toMatch(/^kept +vitest-worker-oldci-1 +younger than --older-than .*otherwise: holder pid 4242 is gone/m)
    expect(await names()).toEqual(['vitest-worker-oldci-1'])

    const collected = gc('--assume-dead-host', 'old-ci-container', '--older-than', '30d')
    expect(collected.code).toBe(0)
    expect(collected.stdout).toMatch(/^deleted +vitest-worker-oldci-1 +holder pid 4242 is gone/m)
    expect(await names()).toEqual([])
    expect(await new FileLeaseStore({ provider, stateDir: state.dir }).read()).toEqual({})
  }, 60_000)
})
