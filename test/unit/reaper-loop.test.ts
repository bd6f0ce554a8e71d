import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, expect, test } from 'vitest'
import { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import type { LeaseOwner, OwnerLiveness } from '../../src/pool/owner-liveness.js'
import { getReaperDir } from '../../src/pool/reaper-marker.js'
import { runReaper, type ReaperConfig } from '../../src/pool/reaper.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'

let stateDir: string
afterEach(() => rmSync(stateDir, { recursive: true, force: true }))

/** An owner that is not this process, judged by the stub below: nothing here signals a real pid. */
const owner: LeaseOwner = { pid: 999_999, host: 'here', startTime: 1 }

function setup(): { config: ReaperConfig; log: string[]; opened: string[] } {
  stateDir = mkdtempSync(join(tmpdir(), 'vm-pool-reaper-loop-'))
  mkdirSync(getReaperDir(stateDir), { recursive: true })
  const markerPath = join(getReaperDir(stateDir), `run1-${owner.pid}.json`)
  const config: ReaperConfig = { owner, runId: 'run1', providerName: 'fake', providerOptions: { stateDir }, stateDir, markerPath }
  return { config, log: [], opened: [] }
}

function deps(config: ReaperConfig, alive: () => boolean, log: string[], opened: string[]) {
  const liveness: OwnerLiveness = { isAlive: () => alive() }
  return {
    provider: async () => {
      opened.push('provider')
      return fakeProvider({ stateDir: config.stateDir })
    },
    store: (provider: ReturnType<typeof fakeProvider>) => {
      opened.push('store')
      return new FileLeaseStore({ provider, stateDir: config.stateDir })
    },
    log: (line: string) => void log.push(line),
    liveness,
  }
}

test('an owner that drained and exited, its state dir removed since: the watchdog exits and makes nothing again', async () => {
  const { config, log, opened } = setup()
  // The owner drained (its marker is gone), exited, and the test that ran it removed the state dir.
  rmSync(stateDir, { recursive: true, force: true })
  await expect(runReaper(config, deps(config, () => false, log, opened))).resolves.toBe('drained')
  expect(opened).toEqual([])
  expect(existsSync(stateDir)).toBe(false)
})

test('an owner that died holding a VM (its marker names it): the watchdog deletes the VM and removes the marker', async () => {
  const { config, log, opened } = setup()
  const provider = fakeProvider({ stateDir })
  await provider.create({ name: 'vm-pool-reaper-loop-1' })
  writeFileSync(config.markerPath, JSON.stringify({ owner, runId: 'run1', provider: 'fake', names: ['vm-pool-reaper-loop-1'] }))
  await expect(runReaper(config, deps(config, () => false, log, opened))).resolves.toBe('reaped')
  expect(opened).toEqual(['provider', 'store'])
  expect((await provider.list()).map((vm) => vm.name)).toEqual([])
  expect(existsSync(config.markerPath)).toBe(false)
  expect(log.join('\n')).toContain('deleted vm-pool-reaper-loop-1')
})

test('a live owner that drains: the watchdog sees its marker go and exits without reaping', async () => {
  const { config, log, opened } = setup()
  writeFileSync(config.markerPath, JSON.stringify({ owner, runId: 'run1', provider: 'fake', names: [] }))
  let polls = 0
  const alive = () => {
    // The owner removes its marker (drain) after the watchdog's second poll, then stays alive.
    if (++polls === 2) rmSync(config.markerPath)
    return true
  }
  await expect(runReaper(config, deps(config, alive, log, opened))).resolves.toBe('drained')
  expect(polls).toBeGreaterThanOrEqual(2)
  expect(opened).toEqual([])
})
