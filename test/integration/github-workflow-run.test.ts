import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, test } from 'vitest'
import { countingProvider, type CountingProvider } from '../../src/providers/counting-provider.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import type { VmProvider, VmSpec } from '../../src/providers/vm-provider.js'
import { SessionManager } from '../../src/workflow/session-manager.js'
import { loadGithubWorkflow, parseGithubWorkflow } from '../../src/workflow/github/load-github-workflow.js'
import { loadRunsOnMapping } from '../../src/workflow/github/runs-on-mapping.js'
import type { CellResult, GithubRunEvent } from '../../src/workflow/github/run-github-cell.js'
import { runGithubWorkflow, type GithubWorkflowResult } from '../../src/workflow/github/run-github-workflow.js'
import { makeFixtureRepo, type FixtureRepo } from '../helpers/github-repo.js'

let repo: FixtureRepo
let stateDir: string

beforeEach(async () => {
  repo = await makeFixtureRepo()
  stateDir = await mkdtemp(join(tmpdir(), 'vm-pool-gh-run-'))
  // Not tracked: checkout must not copy it.
  await writeFile(join(repo.dir, 'untracked.txt'), 'not for the VM\n')
})

afterEach(async () => {
  await repo.dispose()
  await rm(stateDir, { recursive: true, force: true })
})

/** The fake provider, counted, with every spec it was asked for and the most VMs alive at once. */
function observedProvider(): { provider: CountingProvider; specs: VmSpec[]; maxLive: () => number } {
  const inner = fakeProvider({ stateDir })
  const specs: VmSpec[] = []
  const live = new Set<string>()
  let maxLive = 0
  const observed: VmProvider = {
    ...inner,
    async create(spec) {
      specs.push(spec)
      live.add(spec.name)
      maxLive = Math.max(maxLive, live.size)
      return inner.create(spec)
    },
    async delete(name) {
      await inner.delete(name)
      live.delete(name)
    },
  }
  return { provider: countingProvider(observed), specs, maxLive: () => maxLive }
}

const cellsOf = (result: GithubWorkflowResult, job: string): CellResult[] => result.jobs.find((candidate) => candidate.id === job)!.cells
const stepOf = (cell: CellResult, name: string) => cell.steps.find((step) => step.name === name)!

describe('GitHub workflow files on the fake provider', () => {
  test('fixtures/github-repo ci.yml: one VM per matrix cell and job, every command of a cell on its VM, checkout, continue-on-error, if: always(), needs:', async () => {
    const { provider, specs, maxLive } = observedProvider()
    const sessions = new SessionManager({ provider, maxConcurrentSessions: 2 })
    const workflow = await loadGithubWorkflow(repo.ciWorkflow)
    const events: GithubRunEvent[] = []
    const result = await runGithubWorkflow(workflow, { sessions, repo: { dir: repo.dir }, runsOn: await loadRunsOnMapping(undefined, repo.dir), onEvent: (event) => events.push(event) })

    expect(result.jobs.map((job) => [job.id, job.result])).toEqual([
      ['build', 'success'],
      ['test', 'failure'],
      ['report', 'success'],
      ['deploy', 'skipped'],
    ])
    expect(result.status).toBe('failure')

    // One VM per cell: 4 build cells + test + report; deploy got none. All deleted; never more than 2 at once.
    const cells = result.jobs.flatMap((job) => job.cells)
    expect(cells.map((cell) => cell.label)).toEqual(['build (debian, 20)', 'build (debian, 22)', 'build (alpine, 20)', 'build (alpine, 22)', 'test', 'report'])
    expect(provider.stats).toMatchObject({ created: 6, deleted: 6, live: 0 })
    expect(new Set(cells.map((cell) => cell.vm)).size).toBe(6)
    expect(cells.map((cell) => cell.vm).sort()).toEqual([...provider.stats.names].sort())
    expect(maxLive()).toBeLessThanOrEqual(2)
    expect(await readdir(join(stateDir, 'fake'))).toEqual([])

    // From inside: every command that ran printed the VM it ran on, and it is its cell's VM.
    for (const cell of cells) {
      const ran = cell.steps.filter((step) => !step.skipped && step.phase === 'step' && step.command.includes('VM_POOL_VM'))
      expect(ran.length, cell.label).toBeGreaterThan(0)
      for (const step of ran) expect(step.stdout, `${cell.label} / ${step.name}`).toContain(`vm=${cell.vm}`)
      for (const step of cell.steps) expect(step.vm).toBe(cell.vm)
      // "Set up job" printed its workspace, inside the fake VM's own directory.
      expect(cell.steps[0]!.stdout).toContain(`/${cell.vm}/home/workspace`)
    }

    const debian20 = cellsOf(result, 'build')[0]!
    expect(stepOf(debian20, 'Where am I').stdout).toContain('target=debian-20')
    // Checkout: the tracked files (with modes), not the untracked one.
    expect(stepOf(debian20, 'Run actions/checkout@v4').exitCode).toBe(0)
    expect(stepOf(debian20, 'Checkout is here').stdout).toContain('files=.github README.md flaky-switch src \n')
    expect(stepOf(debian20, 'Checkout is here').stdout).toContain('hello from the checkout')
    // continue-on-error: failed, reported, did not fail the job; steps.<id> tells outcome and conclusion.
    expect(stepOf(debian20, 'Flaky lint')).toMatchObject({ exitCode: 1, outcome: 'failure', continuedOnError: true })
    expect(stepOf(debian20, 'Lint outcome').stdout).toContain('lint=failure/success')

    const [test] = cellsOf(result, 'test')
    expect(test!.status).toBe('failure')
    expect(test!.steps.map((step) => [step.name, step.skipped ? 'skip' : step.exitCode])).toEqual([
      ['Set up job', 0],
      ['Run actions/checkout@v4', 0],
      ['Unit tests', 3],
      ['Skipped after a failure', 'skip'],
      ['Upload logs', 0],
      ['On failure', 0],
    ])
    expect(stepOf(test!, 'Unit tests').stderr).toContain('2 of 40 tests failed')
    expect(stepOf(test!, 'Upload logs').stdout).toContain('always')
    expect(stepOf(test!, 'Upload logs').summary).toBe('### Logs\n\n- unit.log: 2 failures\n')
    expect(stepOf(test!, 'Unit tests').summary).toBeUndefined()

    // report ran (if: always()) and saw test's result; deploy needs report, whose ancestor failed: skipped.
    expect(cellsOf(result, 'report')[0]!.steps[1]!.stdout).toContain('test=failure')
    expect(result.jobs[3]!.reason).toMatch(/not every job it needs succeeded \(test: failure\)/)
    expect(events).toContainEqual(expect.objectContaining({ type: 'job-skipped', job: 'deploy' }))

    // runs-on → VM through .github/vm-pool.yml: ubuntu-latest, and "*" for [self-hosted, big].
    expect(specs.map((spec) => ({ cpus: spec.cpus, memoryMiB: spec.memoryMiB }))).toEqual([
      ...Array.from({ length: 4 }, () => ({ cpus: 1, memoryMiB: 256 })),
      { cpus: undefined, memoryMiB: 512 },
      { cpus: 1, memoryMiB: 256 },
    ])
  })

  test('--job and --matrix: only the selected cells get VMs', async () => {
    const { provider } = observedProvider()
    const sessions = new SessionManager({ provider, maxConcurrentSessions: 2 })
    const result = await runGithubWorkflow(await loadGithubWorkflow(repo.ciWorkflow), { sessions, repo: { dir: repo.dir }, jobs: ['build'], matrix: { os: 'alpine' } })
    expect(result.status).toBe('success')
    expect(result.jobs.map((job) => job.id)).toEqual(['build'])
    expect(cellsOf(result, 'build').map((cell) => cell.matrix)).toEqual([
      { os: 'alpine', node: 20 },
      { os: 'alpine', node: 22 },
    ])
    expect(provider.stats).toMatchObject({ created: 2, live: 0 })
  })

  test('fail-fast cancels the cells that have not started; fail-fast: false runs them all', async () => {
    const text = (failFast: boolean) => `
on: push
jobs:
  cells:
    strategy:
      fail-fast: ${failFast}
      max-parallel: 1
      matrix:
        n: [1, 2, 3]
    steps:
      - run: test \${{ matrix.n }} != 1
`
    for (const failFast of [true, false]) {
      const { provider } = observedProvider()
      const sessions = new SessionManager({ provider, maxConcurrentSessions: 3 })
      const result = await runGithubWorkflow(parseGithubWorkflow(text(failFast), 'fail-fast.yml'), { sessions, repo: { dir: repo.dir } })
      const statuses = result.jobs[0]!.cells.map((cell) => cell.status)
      if (failFast) {
        expect(statuses).toEqual(['failure', 'cancelled', 'cancelled'])
        expect(result.jobs[0]!.cells[1]!.error?.code).toBe('VMPOOL_ABORTED')
        expect(provider.stats.created).toBe(1)
      } else {
        expect(statuses).toEqual(['failure', 'success', 'success'])
        expect(provider.stats.created).toBe(3)
      }
      expect(result.jobs[0]!.result).toBe('failure')
      expect(provider.stats.live).toBe(0)
    }
  })

  test('an abort kills the running command, runs the always() and cancelled() steps, skips the rest, deletes the VM', async () => {
    const workflow = parseGithubWorkflow(
      `
on: push
jobs:
  long:
    steps:
      - name: sleeps
        run: echo started; sleep 30
      - name: normal
        run: echo never
      - name: cleanup
        if: always()
        run: echo "cleanup on $VM_POOL_VM"
      - name: on cancel
        if: cancelled()
        run: echo cancelled
`,
      'abort.yml',
    )
    const { provider } = observedProvider()
    const sessions = new SessionManager({ provider, maxConcurrentSessions: 1 })
    const controller = new AbortController()
    const started = performance.now()
    const result = await runGithubWorkflow(workflow, {
      sessions,
      repo: { dir: repo.dir },
      signal: controller.signal,
      onEvent: (event) => {
        if (event.type === 'command-end' && event.result.name === 'Set up job') setTimeout(() => controller.abort(new Error('SIGINT')), 300)
      },
    })
    expect(performance.now() - started).toBeLessThan(20_000)
    expect(result.aborted).toBe(true)
    expect(result.status).toBe('failure')
    const [cell] = result.jobs[0]!.cells
    expect(cell!.status).toBe('cancelled')
    expect(cell!.steps.map((step) => [step.name, step.outcome])).toEqual([
      ['Set up job', 'success'],
      ['sleeps', 'cancelled'],
      ['normal', 'skipped'],
      ['cleanup', 'success'],
      ['on cancel', 'success'],
    ])
    expect(cell!.steps[3]!.stdout).toContain(`cleanup on ${cell!.vm}`)
    expect(provider.stats).toMatchObject({ created: 1, deleted: 1, live: 0 })
  })
})
