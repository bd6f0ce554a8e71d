/**
 * The lease lock stays exclusive when holders are SIGKILLed inside the critical section (issue 11, item 1).
 * 12 real processes update the lease file in a loop while, round after round, a 13th takes the lock and is
 * SIGKILLed inside it (at a random point: in the section, during the write, during the release). From inside
 * the section every process checks that no other running process is in it, and every process's counter in the
 * table must equal the updates it saw succeed: no overlap, no lost update, and nobody waits for a stale period.
 *
 * `VM_POOL_LOCK_TEST_DIST=/path/to/dist` runs the same processes against another build (e.g. one with the
 * old proper-lockfile lock, to see it fail); `VM_POOL_LOCK_TEST_ROUNDS` changes the number of kills.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import { killFixtures, makeStateDir, spawnFixture } from '../../fixtures/pool/harness.js'

const LOOPERS = 12
const ROUNDS = Number(process.env.VM_POOL_LOCK_TEST_ROUNDS ?? 40)
const DIST = process.env.VM_POOL_LOCK_TEST_DIST
const VICTIMS_AHEAD = 3

interface Finished {
  done: number
  errors: number
  overlaps: unknown[]
}

// The Linux default, and the portable fallback (forced here; it is what other platforms get).
describe.each(['abstract-socket', 'symlink'] as const)('lease lock (%s) under SIGKILL', (lock) => {
  const state = makeStateDir()
  afterEach(killFixtures)
  afterAll(() => state.dispose())

  test(`${ROUNDS} holders SIGKILLed inside the section while ${LOOPERS} processes wait: never two inside, no update lost`, async () => {
    const base = { stateDir: state.dir, lock, insideFile: join(state.dir, 'inside'), stopFile: join(state.dir, 'stop'), ...(DIST ? { dist: DIST } : {}) }
    const loopers = Array.from({ length: LOOPERS }, (_, id) => spawnFixture('lock-stress.mjs', { ...base, role: 'looper', id }))
    await Promise.all(loopers.map((looper) => looper.message((m) => m.ready === true, 'ready', 120_000)))
    const victimFailures: string[] = []
    // Victims are spawned a few rounds ahead (a Node start is slow on a busy machine) and wait for 'go'.
    const spawnVictim = (round: number) => spawnFixture('lock-stress.mjs', { ...base, role: 'victim', id: `v${round}` })
    const ahead = Array.from({ length: Math.min(VICTIMS_AHEAD, ROUNDS) }, (_, round) => spawnVictim(round))
    for (let round = 0; round < ROUNDS; round++) {
      const victim = ahead.shift()!
      if (round + VICTIMS_AHEAD < ROUNDS) ahead.push(spawnVictim(round + VICTIMS_AHEAD))
      try {
        await victim.message((m) => m.ready === true, `victim ${round} ready`, 120_000)
        victim.send({ cmd: 'go' })
        // Generous: with a stale-period lock every kill blocks everyone for that period.
        await victim.message((m) => m.inside === true, `victim ${round} inside the section`, 120_000)
      } catch (error) {
        victimFailures.push((error as Error).message.split('\n').slice(0, 3).join(' '))
      }
      victim.child.kill('SIGKILL')
      await victim.exited
    }
    writeFileSync(base.stopFile, '')
    const finished = (await Promise.all(loopers.map((looper) => looper.message((m) => m.finished === true, 'finished', 120_000)))) as unknown as Finished[]

    const table = await new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir }).read()
    const lost = finished.map((result, id) => result.done - Number(table[`test-vm-stress-${id}`]?.runId ?? 0))
    const overlaps = finished.reduce((sum, result) => sum + result.overlaps.length, 0)
    console.log(`lock stress (${lock}): ${ROUNDS} kills, ${finished.reduce((sum, r) => sum + r.done, 0)} updates, ${overlaps} overlapping sections, ${lost.reduce((sum, n) => sum + Math.max(0, n), 0)} lost updates, ${finished.reduce((sum, r) => sum + r.errors, 0)} failed updates, ${victimFailures.length} victims that never got in`)
    expect(victimFailures).toEqual([])
    expect(finished.map((result) => result.overlaps)).toEqual(finished.map(() => []))
    expect(lost).toEqual(finished.map(() => 0))
    expect(finished.map((result) => result.errors)).toEqual(finished.map(() => 0))
    // Every waiter got through between the kills.
    for (const result of finished) expect(result.done).toBeGreaterThan(0)
  }, 600_000)
})
