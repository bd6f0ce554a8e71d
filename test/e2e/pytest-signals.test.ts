import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { beforeAll, describe, expect, test } from 'vitest'
import { ensureDistBuilt } from '../../fixtures/pool/harness.js'
import { findPytest, isPidRunning, runPytest, runVmPool, waitFor } from '../helpers/pytest-fixture.js'

/**
 * Real `pytest -n 2` on fixtures/pytest-signals: each worker's test hangs in `sleep 300` inside its worker VM.
 * One worker is SIGKILLed mid-test (its helper sees it go and deletes its VM; the other worker's VM stays),
 * then the whole run gets SIGINT as from a terminal's Ctrl-C. Deadlines, not timings: "a few seconds later"
 * is generous here because 2 cores are shared with QEMU guests.
 */
const pytest = findPytest()
/** How long a helper may take to notice its runner went and delete its VM (it polls every 250 ms; the delete is a directory). */
const CLEANUP_DEADLINE_MS = 30_000

interface Marker {
  pid: number
  vm: string
  worker: string
  helper: number
}

describe.skipIf(pytest.missing !== undefined)('pytest-vm-pool when pytest is killed', () => {
  beforeAll(async () => {
    await ensureDistBuilt()
  }, 180_000)

  test('SIGKILL of one xdist worker mid-test, then SIGINT of the whole run: no VM left, no helper left, gc finds nothing', { timeout: 400_000 }, async () => {
    const markers: Marker[] = []
    const run = await runPytest('signals', {
      python: pytest.python!,
      args: ['-n', '2'],
      onSpawn: async (child, run) => {
        const paths = ['gw0', 'gw1'].map((worker) => join(run.resultsDir, `${worker}.marker`))
        await waitFor(() => paths.every((path) => existsSync(path)), 'both workers to hang inside their VMs', 240_000)
        markers.push(...paths.map((path) => JSON.parse(readFileSync(path, 'utf8')) as Marker))
        const [killed, survivor] = markers as [Marker, Marker]
        expect(run.liveVms()).toEqual([killed.vm, survivor.vm].sort())
        for (const marker of markers) expect(isPidRunning(marker.helper)).toBe(true)

        process.kill(killed.pid, 'SIGKILL')
        await waitFor(() => !run.liveVms().includes(killed.vm), `the VM of the SIGKILLed worker (${killed.vm}) to be deleted`, CLEANUP_DEADLINE_MS)
        await waitFor(() => !isPidRunning(killed.helper), 'the helper of the SIGKILLed worker to exit', CLEANUP_DEADLINE_MS)
        // The other worker still runs its test on its VM.
        expect(run.liveVms()).toEqual([survivor.vm])
        expect(isPidRunning(survivor.pid)).toBe(true)

        process.kill(-child.pid!, 'SIGINT')
      },
    })
    expect(run.signal, run.output()).toBeNull()
    expect(run.exitCode, run.output()).not.toBe(0)
    await waitFor(() => run.liveVms().length === 0, 'every VM to be gone after SIGINT', CLEANUP_DEADLINE_MS)
    await waitFor(() => markers.every((marker) => !isPidRunning(marker.helper)), 'every helper to exit', CLEANUP_DEADLINE_MS)
    const gc = await runVmPool(['gc', '--json'], run.stateDir)
    expect(gc.code, gc.stderr).toBe(0)
    expect(JSON.parse(gc.stdout)).toMatchObject({ deleted: [], failed: [] })
  })
})
