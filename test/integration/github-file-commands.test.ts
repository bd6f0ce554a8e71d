import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from 'vitest'
import { countingProvider } from '../../src/providers/counting-provider.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { SessionManager } from '../../src/workflow/session-manager.js'
import { parseGithubWorkflow } from '../../src/workflow/github/load-github-workflow.js'
import type { CellResult } from '../../src/workflow/github/run-github-cell.js'
import { runGithubWorkflow, type GithubWorkflowResult } from '../../src/workflow/github/run-github-workflow.js'
import { makeFixtureRepo, type FixtureRepo } from '../helpers/github-repo.js'
import { getQemuSkipReason, QEMU_TEST_CREATE_TIMEOUT_MS, useQemuTestProvider, type QemuTestProvider } from '../helpers/qemu.js'

/**
 * GITHUB_ENV, GITHUB_OUTPUT, GITHUB_PATH and job outputs, end to end on the fake provider: the steps are
 * real `sh` processes in each fake VM's own directory, the files are read back by the same command a
 * real VM gets.
 */

let repo: FixtureRepo
let stateDir: string

beforeEach(async () => {
  repo = await makeFixtureRepo()
  stateDir = await mkdtemp(join(tmpdir(), 'vm-pool-gh-files-'))
})

afterEach(async () => {
  await repo.dispose()
  await rm(stateDir, { recursive: true, force: true })
})

async function run(text: string, execFault?: string) {
  const provider = countingProvider(fakeProvider({ stateDir, ...(execFault ? { faults: { exec: execFault } } : {}) }))
  const sessions = new SessionManager({ provider, maxConcurrentSessions: 2 })
  const result = await runGithubWorkflow(parseGithubWorkflow(text, 'files.yml'), { sessions, repo: { dir: repo.dir } })
  expect(provider.stats.live).toBe(0)
  expect(await readdir(join(stateDir, 'fake'))).toEqual([])
  return result
}

const cellOf = (result: GithubWorkflowResult, job: string, index = 0): CellResult => result.jobs.find((candidate) => candidate.id === job)!.cells[index]!
const stepOf = (cell: CellResult, name: string) => cell.steps.find((step) => step.name === name)!

const WORKFLOW = `
on: push
env:
  FOO: from-the-workflow
jobs:
  first:
    outputs:
      y: \${{ steps.one.outputs.y }}
      text: \${{ steps.one.outputs.text }}
      late: \${{ env.LATE }}
    steps:
      - name: before
        run: echo "foo=$FOO"
      - id: one
        name: write
        run: |
          mkdir -p "$HOME/my tools/bin"
          printf '#!/bin/sh\\necho "my-tool ran from $0"\\n' > "$HOME/my tools/bin/my-tool"
          chmod +x "$HOME/my tools/bin/my-tool"
          echo "$HOME/my tools/bin" >> "$GITHUB_PATH"
          echo FOO=bar >> "$GITHUB_ENV"
          echo x=42 >> "$GITHUB_OUTPUT"
          echo y=from-first >> "$GITHUB_OUTPUT"
          { echo 'text<<EOF'; echo 'line 1'; echo 'line 2'; echo EOF; } >> "$GITHUB_OUTPUT"
          echo '# summary' >> "$GITHUB_STEP_SUMMARY"
      - name: read
        env:
          FROM_EXPRESSION: \${{ env.FOO }}
        run: |
          echo "shell=$FOO expr=$FROM_EXPRESSION x=\${{ steps.one.outputs.x }}"
          echo "text=[\${{ steps.one.outputs.text }}]"
          my-tool
          echo "summary=$(wc -c < "$GITHUB_STEP_SUMMARY" | tr -d ' ') output=$(wc -c < "$GITHUB_OUTPUT" | tr -d ' ')"
      - name: step env wins
        env:
          FOO: the-step-own
        run: echo "foo=$FOO"
      - id: failing
        name: fails but writes
        continue-on-error: true
        run: |
          echo LATE=after-a-failure >> "$GITHUB_ENV"
          echo "z=set before failing" >> "$GITHUB_OUTPUT"
          exit 4
      - name: after the failure
        run: echo "late=$LATE z=\${{ steps.failing.outputs.z }} outcome=\${{ steps.failing.outcome }}"
  cells:
    strategy:
      matrix:
        n: [1, 2]
    outputs:
      one: \${{ steps.s.outputs.one }}
      two: \${{ steps.s.outputs.two }}
    steps:
      - id: s
        run: echo "\${{ matrix.n == 1 && 'one' || 'two' }}=cell-\${{ matrix.n }}" >> "$GITHUB_OUTPUT"
  second:
    needs: [first, cells]
    if: needs.first.outputs.y == 'from-first'
    steps:
      - name: needs
        run: |
          echo "y=\${{ needs.first.outputs.y }} late=\${{ needs.first.outputs.late }} one=\${{ needs.cells.outputs.one }} two=\${{ needs.cells.outputs.two }}"
          echo "text=[\${{ needs.first.outputs.text }}] foo=$FOO"
          command -v my-tool || echo "no my-tool on this VM"
`

/** What WORKFLOW must show, on any provider; `toolPath` is where the script written to GITHUB_PATH's directory is. */
function checkWorkflow(result: GithubWorkflowResult, toolPath: (cell: CellResult) => string | RegExp): void {
  expect(result.jobs.map((job) => [job.id, job.result])).toEqual([
    ['first', 'success'],
    ['cells', 'success'],
    ['second', 'success'],
  ])
  const first = cellOf(result, 'first')
  expect(stepOf(first, 'before').stdout).toBe('foo=from-the-workflow\n')
  expect(stepOf(first, 'write')).toMatchObject({ exitCode: 0, outcome: 'success' })
  const read = stepOf(first, 'read')
  // GITHUB_ENV: in the shell and in ${{ env }}; GITHUB_OUTPUT: steps.<id>.outputs, multi-line too.
  expect(read.stdout).toContain('shell=bar expr=bar x=42\n')
  expect(read.stdout).toContain('text=[line 1\nline 2]\n')
  // GITHUB_PATH: the script is found by name, in a directory with a space.
  const tool = toolPath(first)
  if (typeof tool === 'string') expect(read.stdout).toContain(`my-tool ran from ${tool}\n`)
  else expect(read.stdout).toMatch(tool)
  // The files were emptied after each step (GITHUB_STEP_SUMMARY included).
  expect(read.stdout).toContain('summary=0 output=0\n')
  expect(stepOf(first, 'step env wins').stdout).toBe('foo=the-step-own\n')
  // A failed step's file commands count too.
  expect(stepOf(first, 'fails but writes')).toMatchObject({ exitCode: 4, outcome: 'failure', continuedOnError: true })
  expect(stepOf(first, 'after the failure').stdout).toBe('late=after-a-failure z=set before failing outcome=failure\n')

  expect(result.jobs[0]!.outputs).toEqual({ y: 'from-first', text: 'line 1\nline 2', late: 'after-a-failure' })
  expect(cellOf(result, 'cells', 0).outputs).toEqual({ one: 'cell-1', two: '' })
  expect(cellOf(result, 'cells', 1).outputs).toEqual({ one: '', two: 'cell-2' })
  expect(result.jobs[1]!.outputs).toEqual({ one: 'cell-1', two: 'cell-2' })

  // Another job, another VM: the outputs arrive, the env and PATH of the first job's VM do not.
  const needs = stepOf(cellOf(result, 'second'), 'needs')
  expect(needs.stdout).toContain('y=from-first late=after-a-failure one=cell-1 two=cell-2\n')
  expect(needs.stdout).toContain('text=[line 1\nline 2] foo=from-the-workflow\n')
  expect(needs.stdout).toContain('no my-tool on this VM\n')
}

describe('GitHub file commands on the fake provider', () => {
  test('GITHUB_ENV, GITHUB_OUTPUT and GITHUB_PATH reach later steps; job outputs reach needs.<id>.outputs', async () => {
    checkWorkflow(await run(WORKFLOW), (first) => join(stateDir, 'fake', first.vm, 'home', 'my tools', 'bin', 'my-tool'))
  })

  test('a malformed GITHUB_ENV line or an unterminated GITHUB_OUTPUT value fails its step with a clear message; the step keeps its output', async () => {
    const result = await run(`
on: push
jobs:
  bad:
    steps:
      - name: good line, then a bad one
        run: |
          echo "printed before"
          echo GOOD=1 >> "$GITHUB_ENV"
          echo "this is not a command" >> "$GITHUB_ENV"
      - name: not run
        run: echo never
      - name: cleanup
        if: always()
        run: |
          echo "good=$GOOD"
          echo 'v<<EOF' >> "$GITHUB_OUTPUT"
          echo 'no end' >> "$GITHUB_OUTPUT"
`)
    const cell = cellOf(result, 'bad')
    expect(cell.status).toBe('failure')
    expect(cell.steps.map((step) => [step.name, step.outcome])).toEqual([
      ['Set up job', 'success'],
      ['good line, then a bad one', 'failure'],
      ['not run', 'skipped'],
      ['cleanup', 'failure'],
    ])
    const bad = stepOf(cell, 'good line, then a bad one')
    expect(bad).toMatchObject({ exitCode: 0, stdout: 'printed before\n' })
    expect(bad.error).toEqual({ code: 'VMPOOL_WORKFLOW_INVALID', message: 'good line, then a bad one: GITHUB_ENV line 2: "this is not a command": expected NAME=value or NAME<<DELIMITER' })
    // Nothing of a malformed file is applied, and it is emptied all the same.
    const cleanup = stepOf(cell, 'cleanup')
    expect(cleanup.stdout).toBe('good=\n')
    expect(cleanup.error?.message).toBe('cleanup: GITHUB_OUTPUT line 1: "v<<EOF": no line "EOF" ends this multi-line value')
    expect(result.status).toBe('failure')
  })

  test('a read-back that fails (here an injected exec failure) fails the step with that error; its exit code and output stay', async () => {
    // Only the read-back command contains this line ("Set up job" and the steps do not).
    const result = await run(
      `
on: push
jobs:
  lost:
    steps:
      - name: prints
        run: echo out; echo err >&2
      - name: always
        if: always()
        run: echo again; exit 2
`,
      'for f in env output path summary',
    )
    const cell = cellOf(result, 'lost')
    expect(cell.status).toBe('failure')
    expect(stepOf(cell, 'prints')).toMatchObject({ exitCode: 0, stdout: 'out\n', stderr: 'err\n', outcome: 'failure', error: { code: 'VMPOOL_EXEC_FAILED' } })
    expect(stepOf(cell, 'prints').error!.message).toMatch(/injected exec failure/)
    expect(stepOf(cell, 'always')).toMatchObject({ exitCode: 2, stdout: 'again\n', outcome: 'failure', error: { code: 'VMPOOL_EXEC_FAILED' } })
  })
})

const qemuSkip = getQemuSkipReason()

// The read-back is a shell line: on QEMU it runs under the minimal image's busybox (sh, head -c, printf '\0').
describe.skipIf(qemuSkip !== undefined)(`GitHub file commands on QEMU${qemuSkip ? ` (skipped: ${qemuSkip})` : ''}`, () => {
  let qemu: QemuTestProvider
  beforeAll(() => {
    qemu = useQemuTestProvider()
  })
  afterAll(async () => {
    await qemu?.cleanup()
  })

  test('the same workflow: GITHUB_ENV, GITHUB_OUTPUT, GITHUB_PATH and job outputs', { timeout: 4 * QEMU_TEST_CREATE_TIMEOUT_MS }, async () => {
    const provider = countingProvider(qemu.provider)
    const sessions = new SessionManager({ provider, maxConcurrentSessions: 2 })
    const result = await runGithubWorkflow(parseGithubWorkflow(WORKFLOW, 'files.yml'), { sessions, repo: { dir: repo.dir } })
    expect(provider.stats.live).toBe(0)
    checkWorkflow(result, () => /my-tool ran from \/[^\n]*\/my tools\/bin\/my-tool\n/)
  })
})
