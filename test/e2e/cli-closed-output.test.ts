/**
 * `vm-pool ls | head -1` and friends: the reader of the bin's stdout closes its end of the pipe before the
 * bin writes. The bin must end quietly (no EPIPE stack trace) and `run` must still delete its VMs.
 * Real pipes: the child's stdout pipe is closed on our side right after spawn, long before Node in the
 * child has started, so its first write meets a closed pipe (EPIPE) every time.
 */
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, test } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { BIN, makeStateDir } from '../../fixtures/pool/harness.js'

interface Finished {
  code: number | null
  signal: NodeJS.Signals | null
  stderr: string
}

/** Run the bin with its stdout reader closed at once; stderr stays readable (unless `closeStderr`). */
function runWithClosedStdout(args: string[], stateDir: string, closeStderr = false): Promise<Finished> {
  const env: NodeJS.ProcessEnv = { ...process.env, VM_POOL_STATE_DIR: stateDir, DEBUG: '', NODE_OPTIONS: '' }
  delete env.VM_POOL_PROVIDER_OPTIONS
  const child = spawn(process.execPath, [BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout.destroy()
  if (closeStderr) child.stderr.destroy()
  let stderr = ''
  if (!closeStderr) child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  return new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal, stderr })))
}

describe('a closed stdout ends the command quietly (built bin, fake provider)', () => {
  let state: ReturnType<typeof makeStateDir>
  beforeEach(async () => {
    state = makeStateDir()
    const provider = fakeProvider({ stateDir: state.dir })
    for (let index = 0; index < 3; index++) await provider.create({ name: `vm-pool-wf-closed${index}` })
  })
  afterEach(() => state.dispose())

  test.each(['ls', 'ls --json', 'gc --dry-run', 'gc --dry-run --json'])('vm-pool %s', async (command) => {
    const result = await runWithClosedStdout([...command.split(' '), '--provider', 'fake'], state.dir)
    expect(result.stderr).toBe('')
    expect(result).toMatchObject({ code: 0, signal: null })
    // gc --dry-run deleted nothing.
    expect(await fakeProvider({ stateDir: state.dir }).list()).toHaveLength(3)
  })

  test('vm-pool ls with stdout and stderr both closed', async () => {
    const result = await runWithClosedStdout(['ls', '--provider', 'fake', '--bogus'], state.dir, true)
    expect(result).toMatchObject({ code: 2, signal: null })
  })

  test.each([[false], [true]])('vm-pool run (--json: %s) stops, cleans up and deletes its VM', async (json) => {
    const workflow = join(state.dir, 'slow.yml')
    // Without --json the first progress line hits the closed pipe while the step sleeps: the run is
    // aborted, the sleep killed, cleanup runs and the VM goes. With --json stdout is written at the end.
    writeFileSync(workflow, `name: slow\nsteps:\n  - run: ${json ? 'echo done' : 'sleep 60'}\ncleanup:\n  - run: echo cleaned\n`)
    const before = (await fakeProvider({ stateDir: state.dir }).list()).map((vm) => vm.name)
    const result = await runWithClosedStdout(['run', '--provider', 'fake', ...(json ? ['--json'] : []), workflow], state.dir)
    expect(result.stderr).not.toMatch(/EPIPE|at .*\.js:\d+/)
    if (json) {
      expect(result.stderr).toMatch(/\[slow\] cleanup ok .*echo cleaned/)
      expect(result.code).toBe(0)
    } else {
      expect(result.code).toBe(130)
    }
    expect(result.signal).toBe(null)
    expect((await fakeProvider({ stateDir: state.dir }).list()).map((vm) => vm.name)).toEqual(before)
  }, 60_000)
})
