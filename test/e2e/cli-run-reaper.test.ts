import { existsSync } from 'node:fs'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { execa } from 'execa'
import { afterEach, expect, onTestFinished, test } from 'vitest'
import { isPidAlive } from '../../src/util/process-info.js'

// `vm-pool run` takes its VMs from the cross-process pool: when the CLI is SIGKILLed (no cleanup of
// its own runs), the pool's detached reaper deletes the workflow's VM.
const root = resolve(import.meta.dirname, '../..')
const bin = join(root, 'dist/cli/main.js')
/** How long the reaper may take; generous for a loaded 2-core machine. */
const REAP_DEADLINE_MS = 30_000

const started: number[] = []
afterEach(() => {
  for (const pid of started.splice(0)) if (isPidAlive(pid)) process.kill(pid, 'SIGKILL')
})

async function fakeVms(stateDir: string): Promise<string[]> {
  return readdir(join(stateDir, 'fake')).catch(() => [])
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, deadlineMs: number): Promise<T> {
  const end = Date.now() + deadlineMs
  for (;;) {
    const value = await probe()
    if (value !== undefined) return value
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

test('SIGKILL of vm-pool run: the reaper deletes the workflow VM within seconds', async () => {
  expect(existsSync(bin), 'run npm run build first').toBe(true)
  const stateDir = await mkdtemp(join(tmpdir(), 'vm-pool-run-reaper-'))
  // After the afterEach above has killed what is left: then nothing writes here any more.
  onTestFinished(() => rm(stateDir, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 }))
  const pidFile = join(stateDir, 'step.pid')
  const workflow = join(stateDir, 'long.yml')
  await writeFile(workflow, `name: long\nsteps:\n  - name: sleep\n    run: echo $$ > ${pidFile}; exec sleep 60\n`)
  const env: NodeJS.ProcessEnv = { ...process.env, VM_POOL_STATE_DIR: stateDir }
  delete env.VM_POOL_PROVIDER_OPTIONS
  const cli = execa(process.execPath, [bin, 'run', '--provider', 'fake', workflow], { env, reject: false })
  started.push(cli.pid!)
  try {
    const stepPid = await waitFor('the step to start', async () => (await readFile(pidFile, 'utf8').catch(() => '')).trim() || undefined, REAP_DEADLINE_MS)
    started.push(Number(stepPid))
    const [vm] = await fakeVms(stateDir)
    expect(vm).toMatch(/^vm-pool-wf-[0-9a-z]+-1$/)
    cli.kill('SIGKILL')
    await cli
    await waitFor('the reaper to delete the VM', async () => ((await fakeVms(stateDir)).length === 0 ? true : undefined), REAP_DEADLINE_MS)
  } finally {
    cli.kill('SIGKILL')
  }
}, 60_000)
