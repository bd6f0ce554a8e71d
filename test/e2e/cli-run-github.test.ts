import { existsSync } from 'node:fs'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { execa, type Options } from 'execa'
import { request } from 'undici'
import { afterEach, beforeAll, beforeEach, describe, expect, onTestFinished, test } from 'vitest'
import { signWebhookBody } from '../../src/cli/webhook/webhook-signature.js'
import type { GithubWorkflowResult } from '../../src/workflow/github/run-github-workflow.js'
import { makeFixtureRepo, type FixtureRepo } from '../helpers/github-repo.js'

// The built bin, run as a user runs it (`npm test` builds first).
const root = resolve(import.meta.dirname, '../..')
const bin = join(root, 'dist/cli/main.js')
const CI = '.github/workflows/ci.yml'
/** Each test runs the bin a few times, each booting fake VMs: seconds each on a busy 2-core machine. */
const E2E_TIMEOUT_MS = 120_000

let stateDir: string
let repo: FixtureRepo

beforeAll(() => {
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run npm run build first`)
})

beforeEach(async () => {
  stateDir = await mkdtemp(join(tmpdir(), 'vm-pool-cli-gh-'))
  repo = await makeFixtureRepo()
})

afterEach(async () => {
  await repo.dispose()
  await rm(stateDir, { recursive: true, force: true })
})

function cliEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, VM_POOL_STATE_DIR: stateDir, ...extra }
  for (const name of ['DEBUG', 'VM_POOL_PROVIDER', 'VM_POOL_PROVIDER_OPTIONS', 'VM_POOL_TIMEOUT_SCALE', 'VM_POOL_HISTORY_DB', 'VM_POOL_WEBHOOK_SECRET']) if (!(name in extra)) delete env[name]
  return env
}

function vmPool(args: string[], options: Options & { env?: Record<string, string> } = {}) {
  return execa(process.execPath, [bin, ...args], { cwd: repo.dir, reject: false, ...options, env: cliEnv(options.env), extendEnv: false })
}

/** Resolves with the first match of `pattern` in the child's stdout so far (the output stays buffered for its result). */
function waitForStdout(child: ReturnType<typeof vmPool>, pattern: RegExp): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let text = ''
    const onData = (chunk: Buffer) => {
      text += chunk.toString()
      const match = pattern.exec(text)
      if (match) {
        child.stdout!.off('data', onData)
        resolve(match)
      }
    }
    child.stdout!.on('data', onData)
    child.then(() => reject(new Error(`exited before printing ${pattern}: ${text}`)), reject)
  })
}

async function leftoverVms(): Promise<string[]> {
  return readdir(join(stateDir, 'fake')).catch(() => [])
}

describe('vm-pool run on a GitHub Actions file (built bin, fake provider)', () => {
  test('the fixture ci.yml: exit 1 (a job failed), one line per command per cell, the skipped job, a summary, no VM left', async () => {
    const result = await vmPool(['run', '-p', 'fake', CI])
    expect(result.exitCode).toBe(1)
    expect(result.stderr).toBe('')
    const stdout = String(result.stdout)
    for (const label of ['build (debian, 20)', 'build (debian, 22)', 'build (alpine, 20)', 'build (alpine, 22)']) {
      expect(stdout).toMatch(new RegExp(`\\[${label.replace(/[()]/g, '\\$&')}\\]\\s+step\\s+warn\\s+exit 1\\s+\\d+ m?s\\s+Flaky lint \\(continue-on-error\\)\\n`))
    }
    expect(stdout).toMatch(/\[test\]\s+step\s+FAIL\s+exit 3\s+\d+ m?s\s+Unit tests\n    stdout \| vm=vm-pool-wf-\S+\n    stderr \| 2 of 40 tests failed\n/)
    expect(stdout).toMatch(/\[test\]\s+step\s+skip\s+Skipped after a failure\n/)
    // What the step wrote to GITHUB_STEP_SUMMARY is shown under its line.
    expect(stdout).toMatch(/\[test\]\s+step\s+ok\s+exit 0\s+\d+ m?s\s+Upload logs\n    summary \| ### Logs\n    summary \| \n    summary \| - unit\.log: 2 failures\n/)
    expect(stdout).toMatch(/\[deploy\]\s+job deploy skipped: not every job it needs succeeded \(test: failure\)\n/)
    expect(stdout.trimEnd().split('\n').at(-1)).toMatch(/^vm-pool run: ci: 4 jobs on 6 VMs, 2 succeeded, 1 failed \(test: step "Unit tests"\), 1 skipped \(deploy\) in \d/)
    expect(await leftoverVms()).toEqual([])
  }, E2E_TIMEOUT_MS)

  test('--job and --matrix select cells (exit 0); --json has every step with its VM; --list runs nothing', async () => {
    const list = await vmPool(['run', '--list', CI])
    expect(list.exitCode).toBe(0)
    expect(list.stdout).toContain('.github/workflows/ci.yml: workflow "ci", 4 job(s), 7 VM(s)')
    expect(list.stdout).toContain('    - test  runs-on: self-hosted, big → 512 MiB (runs-on mapping "*")')
    expect(existsSync(join(stateDir, 'fake'))).toBe(false)

    const result = await vmPool(['run', '-p', 'fake', '--json', '--job', 'build', '--matrix', 'os=debian', CI])
    expect(result.exitCode).toBe(0)
    const [run] = JSON.parse(String(result.stdout)) as GithubWorkflowResult[]
    const cells = run!.jobs[0]!.cells
    expect(cells.map((cell) => cell.label)).toEqual(['build (debian, 20)', 'build (debian, 22)'])
    for (const cell of cells) expect(cell.steps.filter((step) => step.stdout.includes('vm=')).every((step) => step.stdout.includes(`vm=${cell.vm}`))).toBe(true)

  }, E2E_TIMEOUT_MS)

  test('bad input is exit 2 with a message naming the key or option, no stack, nothing run', async () => {
    await writeFile(join(repo.dir, '.github/workflows/bad.yml'), 'on: push\njobs:\n  a:\n    runs_on: x\n    steps: [{ run: echo }]\n')
    await writeFile(join(repo.dir, '.github/workflows/action.yml'), 'on: push\njobs:\n  a:\n    steps:\n      - uses: actions/setup-node@v4\n      - run: echo ok\n')
    const cases: Array<[string[], RegExp]> = [
      [['run', '-p', 'fake', '.github/workflows/bad.yml'], /bad\.yml:4:5: jobs\.a\.runs_on: unknown key \(did you mean "runs-on"\?\)[\s\S]*nothing was run/],
      [['run', '-p', 'fake', '--job', 'nope', CI], /--job nope: \.github\/workflows\/ci\.yml has no job "nope" \(jobs: build, test, report, deploy\)/],
      [['run', '-p', 'fake', '--matrix', 'os=mac', CI], /--matrix os=mac: no cell of job "build" matches/],
      [['run', '-p', 'fake', '--matrix', 'os', CI], /--matrix expects KEY=VALUE, got "os"/],
      [['run', '-p', 'fake', '--strict', '.github/workflows/action.yml'], /action\.yml:5:9: jobs\.a\.steps\[0\]\.uses: actions\/setup-node@v4 is not run by vm-pool .* \(an error with --strict\)/],
      [['run', '-p', 'fake', '--job', 'build', CI, '.github/workflows/action.yml'], /--job and --matrix apply to one workflow file at a time/],
      [['run', '-p', 'fake', '--job', 'x', join(root, 'fixtures/workflows/run-tests.yml')], /--job applies to GitHub Actions workflow files/],
      [['run', '-p', 'fake', CI, join(root, 'fixtures/workflows/run-tests.yml')], /cannot be mixed in one run/],
    ]
    for (const [args, message] of cases) {
      const result = await vmPool(args)
      expect({ args, exitCode: result.exitCode }).toEqual({ args, exitCode: 2 })
      expect(result.stderr).toMatch(message)
      expect(result.stderr).not.toMatch(/\n\s+at /)
    }
    // Without --strict the other action is skipped with a warning, and the rest runs.
    const lenient = await vmPool(['run', '-p', 'fake', '.github/workflows/action.yml'])
    expect(lenient.exitCode).toBe(0)
    expect(lenient.stderr).toMatch(/^warning: \.github\/workflows\/action\.yml:5:9: .*setup-node@v4 is not run by vm-pool/)
    expect(lenient.stdout).toMatch(/\[a\] step\s+skip\s+Run actions\/setup-node@v4 \(actions\/setup-node@v4 is not run by vm-pool \(only actions\/checkout is\)\)\n/)
    expect(await leftoverVms()).toEqual([])
  }, E2E_TIMEOUT_MS)

  test('Ctrl-C: exit 130, the running command killed, always() steps ran, VMs deleted', async () => {
    await writeFile(join(repo.dir, '.github/workflows/long.yml'), 'on: push\njobs:\n  long:\n    steps:\n      - run: echo started; sleep 60\n      - if: always()\n        run: echo cleaned up\n')
    const child = vmPool(['run', '-p', 'fake', '.github/workflows/long.yml'])
    onTestFinished(() => {
      child.kill('SIGKILL')
    })
    await waitForStdout(child, /Set up job/)
    await new Promise((done) => setTimeout(done, 500))
    child.kill('SIGINT')
    const result = await child
    expect(result.exitCode).toBe(130)
    expect(result.stdout).toMatch(/\[long\] step\s+ok\s+exit 0\s+\d+ m?s\s+Run echo cleaned up\n/)
    expect(result.stdout).toMatch(/interrupted: running commands killed, always\(\) steps ran/)
    expect(await leftoverVms()).toEqual([])
  }, E2E_TIMEOUT_MS)
})

describe('vm-pool history', () => {
  test('after runs with a flaky step, --flaky --json names it with its counts; a failed step gets the history line', async () => {
    const cell = ['--job', 'build', '--matrix', 'os=debian', '--matrix', 'node=20']
    // flaky-switch is tracked: the working tree's version is what checkout copies.
    const first = await vmPool(['run', '-p', 'fake', ...cell, CI])
    expect(first.exitCode).toBe(0)
    await writeFile(join(repo.dir, 'flaky-switch'), 'pass\n')
    expect((await vmPool(['run', '-p', 'fake', ...cell, CI])).exitCode).toBe(0)
    await writeFile(join(repo.dir, 'flaky-switch'), 'fail\n')
    const third = await vmPool(['run', '-p', 'fake', ...cell, CI])
    expect(third.stdout).toMatch(/Flaky lint \(continue-on-error\)\n    stdout \| vm=\S+\n    history \| this step failed 2 of its last 3 runs\n/)

    const flaky = await vmPool(['history', '--flaky', '--json'])
    expect(flaky.exitCode).toBe(0)
    expect(JSON.parse(String(flaky.stdout))).toEqual([{ workflow: 'ci', job: 'build (debian, 20)', step: 'Flaky lint', commandHash: expect.stringMatching(/^[0-9a-f]{16}$/), runs: 3, passed: 1, failed: 2, lastRunAt: expect.any(String) }])
    const text = await vmPool(['history'])
    expect(text.stdout).toMatch(/ci \/ build \(debian, 20\) \/ Flaky lint\s+3\s+33%/)
    const slow = await vmPool(['history', '--slow', '--limit', '2'])
    expect(slow.stdout).toMatch(/^slowest steps \(by average duration\):\n  STEP\s+AVG\s+MAX\s+RUNS(\n  ci \/ build \(debian, 20\) \/ .+){2}$/)
  }, E2E_TIMEOUT_MS)

  test('a corrupt history file is moved aside with a message and the run goes on; bad usage is exit 2', async () => {
    await writeFile(join(stateDir, 'history.sqlite'), 'this is not a database, it is a text file that got here somehow\n'.repeat(100))
    const result = await vmPool(['run', '-p', 'fake', '--job', 'report', CI])
    expect(result.exitCode).toBe(0)
    expect(result.stderr).toMatch(/^vm-pool: the command history .*history\.sqlite could not be read \(.*\); moved it to .*history\.sqlite\.corrupt-\S+ and started a new one$/)
    expect((await readdir(stateDir)).filter((file) => file.startsWith('history.sqlite.corrupt-'))).toHaveLength(1)
    expect(JSON.parse(String((await vmPool(['history', '--json'])).stdout))).toHaveLength(2)

    for (const args of [['history', '--limit', '0'], ['history', 'extra'], ['history', '--nope']]) {
      const bad = await vmPool(args)
      expect({ args, exitCode: bad.exitCode }).toEqual({ args, exitCode: 2 })
      expect(bad.stderr).toMatch(/Run 'vm-pool history --help' for usage/)
    }
    expect((await vmPool(['history'], { env: { VM_POOL_HISTORY_DB: 'off' } })).exitCode).toBe(2)
    expect((await vmPool(['history', '--help'])).stdout).toContain('Usage: vm-pool history [--flaky] [--slow] [--limit N] [--json]')
  }, E2E_TIMEOUT_MS)
})

describe('vm-pool serve (built bin)', () => {
  test('listens on loopback, runs a signed push, logs no secret, stops on SIGINT with its VMs deleted', async () => {
    const secret = 'serve-e2e-secret-5b0c2a71'
    const child = vmPool(['serve', '--port', '0', '-p', 'fake', '--repo', repo.dir], { env: { VM_POOL_WEBHOOK_SECRET: secret } })
    onTestFinished(() => {
      child.kill('SIGKILL')
    })
    const url = (await waitForStdout(child, /listening on (http:\/\/127\.0\.0\.1:\d+)\/webhooks\/github/))[1]
    const body = JSON.stringify({ ref: 'refs/heads/main', after: await repo.git('rev-parse', 'HEAD') })
    const headers = { 'content-type': 'application/json', 'x-github-event': 'push', 'x-github-delivery': 'e2e-1', 'x-hub-signature-256': signWebhookBody(secret, body) }
    const accepted = await request(`${url}/webhooks/github`, { method: 'POST', body, headers })
    expect(accepted.statusCode).toBe(202)
    await accepted.body.dump()
    let status = 'queued'
    for (let i = 0; i < 300 && (status === 'queued' || status === 'running'); i++) {
      await new Promise((done) => setTimeout(done, 200))
      status = ((await (await request(`${url}/runs/1`)).body.json()) as { status: string }).status
    }
    expect(status).toBe('failure')
    child.kill('SIGINT')
    const result = await child
    expect(result.exitCode).toBe(130)
    const output = `${result.stdout}\n${result.stderr}`
    expect(output).toMatch(/POST \/webhooks\/github 202 push delivery=e2e-1 run=1/)
    expect(output).toMatch(/\[run 1\] finished: ci failure/)
    expect(output).not.toContain(secret)
    expect(await leftoverVms()).toEqual([])
  }, E2E_TIMEOUT_MS)

  test('no secret, no port, not a repository: exit 2 with a message', async () => {
    expect((await vmPool(['serve', '--port', '0', '-p', 'fake'])).stderr).toMatch(/VM_POOL_WEBHOOK_SECRET is not set/)
    expect((await vmPool(['serve', '-p', 'fake'], { env: { VM_POOL_WEBHOOK_SECRET: 'x' } })).stderr).toMatch(/missing --port N/)
    const notRepo = await vmPool(['serve', '--port', '0', '-p', 'fake', '--repo', stateDir], { env: { VM_POOL_WEBHOOK_SECRET: 'x' } })
    expect(notRepo.exitCode).toBe(2)
    expect(notRepo.stderr).toMatch(/is not a git repository/)
    expect((await vmPool(['serve', '--help'])).stdout).toContain('Usage: vm-pool serve --port N')
  }, E2E_TIMEOUT_MS)
})
