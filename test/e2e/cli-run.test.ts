import { existsSync } from 'node:fs'
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { execa, type Options } from 'execa'
import { afterEach, beforeAll, beforeEach, describe, expect, onTestFinished, test } from 'vitest'
import type { StepResult, WorkflowResult } from '../../src/workflow/run-workflow.js'

// The built bin, run as a user runs it (`npm test` builds first).
const root = resolve(import.meta.dirname, '../..')
const bin = join(root, 'dist/cli/main.js')
const workflows = join(root, 'fixtures/workflows')

let stateDir: string

beforeAll(() => {
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run npm run build first`)
})

beforeEach(async () => {
  stateDir = await mkdtemp(join(tmpdir(), 'vm-pool-cli-run-'))
})

afterEach(async () => {
  // Retries: a detached watchdog of a killed run may still be finishing as the dir goes.
  await rm(stateDir, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 })
})

function cliEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, VM_POOL_STATE_DIR: stateDir, ...extra }
  for (const name of ['DEBUG', 'VM_POOL_PROVIDER', 'VM_POOL_PROVIDER_OPTIONS', 'VM_POOL_TIMEOUT_SCALE']) if (!(name in extra)) delete env[name]
  return env
}

function vmPool(args: string[], options: Options & { env?: Record<string, string> } = {}) {
  return execa(process.execPath, [bin, ...args], { cwd: workflows, reject: false, ...options, env: cliEnv(options.env), extendEnv: false })
}

/** Fake VMs still present in the state dir (each is a directory). */
async function leftoverVms(): Promise<string[]> {
  try {
    return await readdir(join(stateDir, 'fake'))
  } catch {
    return []
  }
}

function commandLines(stdout: string, workflow: string): string[] {
  return stdout.split('\n').filter((line) => new RegExp(`^\\[${workflow}\\]\\s+(setup|step|cleanup)\\s`).test(line))
}

describe('vm-pool run (built bin, fake provider)', () => {
  test('success: one line per command with phase, status, exit code and duration; a summary; exit 0; no VM left', async () => {
    const result = await vmPool(['run', '--provider', 'fake', 'build-project.yml', 'run-tests.yml'])
    expect(result.stderr).toBe('')
    expect(result.exitCode).toBe(0)
    const build = commandLines(String(result.stdout), 'build-project')
    expect(build).toHaveLength(7)
    expect(build[1]).toMatch(/^\[build-project\]\s+step\s+ok\s+exit 0\s+\d+ ms\s+step 1$/)
    expect(build[6]).toMatch(/^\[build-project\]\s+cleanup\s+ok\s+exit 0\s+\d+ m?s\s+report$/)
    expect(commandLines(String(result.stdout), 'run-tests')).toHaveLength(5)
    expect(result.stdout).toMatch(/\n\[build-project\] vm vm-pool-wf-[0-9a-z]{8}-\d deleted\n/)
    expect(String(result.stdout).trimEnd().split('\n').at(-1)).toMatch(/^vm-pool run: 2 workflows, 2 succeeded in \d/)
    expect(await leftoverVms()).toEqual([])
  })

  test('a failing step: exit 1, its output shown, later steps skipped, cleanup ran, no VM left', async () => {
    const result = await vmPool(['run', '-p', 'fake', 'failing-step.yml'])
    expect(result.exitCode).toBe(1)
    const stdout = String(result.stdout)
    expect(stdout).toMatch(/\[failing-step\] step\s+FAIL\s+exit 3\s+\d+ ms\s+test\n    stdout \| running 3 tests\n    stderr \| expected 42, got 41\n/)
    expect(stdout).toMatch(/\[failing-step\] step\s+skip\s+package\n/)
    expect(stdout).toMatch(/\[failing-step\] cleanup\s+ok\s+exit 0\s+\d+ ms\s+remove work dir\n/)
    expect(stdout).toContain('vm-pool run: 1 workflow, 0 succeeded, 1 failed (failing-step: step "test") in ')
    expect(await leftoverVms()).toEqual([])
  })

  test('--json prints the WorkflowResult array on stdout, progress on stderr', async () => {
    const result = await vmPool(['run', '-p', 'fake', '--json', 'run-tests.yml', 'setup-fails.yml'])
    expect(result.exitCode).toBe(1)
    const results = JSON.parse(String(result.stdout)) as WorkflowResult[]
    expect(results.map((r) => [r.name, r.status])).toEqual([
      ['run-tests', 'success'],
      ['setup-fails', 'failure'],
    ])
    for (const r of results) expect(r.steps.every((step: StepResult) => step.vm === r.vm)).toBe(true)
    expect(results[0]!.vm).not.toBe(results[1]!.vm)
    expect(results[1]!.steps.map((s) => [s.phase, s.exitCode, s.skipped ?? false])).toEqual([
      ['setup', 100, false],
      ['step', -1, true],
      ['cleanup', 0, false],
    ])
    expect(result.stderr).toMatch(/\[setup-fails\]\s+setup\s+FAIL\s+exit 100/)
    expect(await leftoverVms()).toEqual([])
  })

  test('a step printing 40 MB: its result keeps a bounded head and tail and says how much was dropped; cleanup runs (human and --json)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vm-pool-big-output-'))
    const total = 40 * 1024 * 1024
    // 100-byte lines numbered at the start: the first and the last line show which end was kept.
    await writeFile(
      join(dir, 'big-output.yml'),
      `name: big-output\nsteps:\n  - name: print\n    run: "echo first-line; head -c ${total - 22} /dev/zero | tr '\\\\0' x; echo; echo last-line; exit 4"\ncleanup:\n  - run: echo cleaned\n`,
    )
    try {
      const json = await vmPool(['run', '-p', 'fake', '--json', 'big-output.yml'], { cwd: dir })
      expect(json.exitCode).toBe(1)
      const [result] = JSON.parse(String(json.stdout)) as WorkflowResult[]
      const step = result!.steps[0]!
      expect(step.exitCode).toBe(4)
      expect(step.stdout.startsWith('first-line\nxxxx')).toBe(true)
      expect(step.stdout.endsWith('xxxx\nlast-line\n')).toBe(true)
      expect(step.stdoutDroppedBytes).toBe(total - 1024 * 1024)
      expect(step.stdout).toContain(`[vm-pool: ${total - 1024 * 1024} bytes of stdout dropped (maxOutputBytes)]`)
      expect(Buffer.byteLength(step.stdout)).toBeLessThan(1024 * 1024 + 200)
      expect(result!.steps[1]).toMatchObject({ phase: 'cleanup', exitCode: 0, stdout: 'cleaned\n' })

      const human = await vmPool(['run', '-p', 'fake', 'big-output.yml'], { cwd: dir })
      expect(human.exitCode).toBe(1)
      expect(String(human.stdout)).toMatch(/stdout \| … (\d+ earlier lines and )?40894464 bytes from the middle/)
      // The megabyte of x's kept is one line: shown cut, not whole.
      expect(String(human.stdout)).toMatch(/    stdout \| x{1000} … \(\d+ more characters: --json\)\n/)
      expect(String(human.stdout).length).toBeLessThan(20_000)
      expect(String(human.stdout)).toContain('    stdout | last-line\n')
      expect(String(human.stdout)).toMatch(/\[big-output\] cleanup\s+ok\s+exit 0/)
      expect(await leftoverVms()).toEqual([])
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }, 120_000)

  test('--max-concurrent 1: each workflow gets its VM only after the previous one was deleted', async () => {
    const result = await vmPool(['run', '-p', 'fake', '--max-concurrent', '1', 'run-tests.yml', 'deploy.yml', 'ten-steps.yml'])
    expect(result.exitCode).toBe(0)
    const vmLines = String(result.stdout)
      .split('\n')
      .filter((line) => / vm vm-pool-wf-/.test(line))
      .map((line) => line.replace(/^\[(\S+)\]\s+vm vm-pool-wf-[0-9a-z]{8}-(\d+) (\w+).*$/, '$1 $2 $3'))
    expect(vmLines).toEqual(['run-tests 1 ready', 'run-tests 1 deleted', 'deploy 2 ready', 'deploy 2 deleted', 'ten-steps 3 ready', 'ten-steps 3 deleted'])
  })

  test('--keep-vm leaves exactly that VM and prints how to reach and delete it (and only it)', async () => {
    const result = await vmPool(['run', '-p', 'fake', '--keep-vm', 'run-tests.yml'])
    expect(result.exitCode).toBe(0)
    const name = /kept VM (vm-pool-wf-[0-9a-z]{8}-1) \(fake, --keep-vm\)\n/.exec(String(result.stdout))?.[1]
    expect(name).toBeDefined()
    expect(await leftoverVms()).toEqual([name])
    const home = /reach it:  cd (\S+)/.exec(String(result.stdout))?.[1]
    expect(await readFile(join(home!, 'owner'), 'utf8')).toBe('run-tests\n')
    // A second kept VM must survive the first one's delete command.
    const second = await vmPool(['run', '-p', 'fake', '--keep-vm', 'run-tests.yml'])
    const secondName = /kept VM (vm-pool-wf-[0-9a-z]{8}-1) /.exec(String(second.stdout))?.[1]
    const remove = /delete it: (.+)\n/.exec(String(result.stdout))?.[1]
    expect(remove).toBe(`vm-pool rm ${name} --provider fake`)
    expect((await vmPool(remove!.split(' ').slice(1))).exitCode).toBe(0)
    expect(await leftoverVms()).toEqual([secondName])
    // The provider's own line, for a shell without vm-pool, removes only its VM too.
    const raw = /\n {6}remove: {4}(.+)\n/.exec(String(second.stdout))?.[1]
    expect(raw).toContain(secondName)
    await execa('sh', ['-c', raw!], { env: cliEnv(), extendEnv: false })
    expect(await leftoverVms()).toEqual([])
  }, 60_000) // three CLI runs and an rm: room for a loaded 2-core machine

  test('--keep-vm keeps the VM as the failure left it: cleanup is skipped and says so; vm-pool ssh reaches it', async () => {
    const result = await vmPool(['run', '-p', 'fake', '--keep-vm', 'failing-step.yml'])
    expect(result.exitCode).toBe(1)
    const name = /kept VM (vm-pool-wf-[0-9a-z]{8}-1) \(fake, --keep-vm\)\n/.exec(String(result.stdout))?.[1]
    expect(name, String(result.stdout)).toBeDefined()
    expect(result.stdout).toMatch(/\[failing-step\] cleanup skip +remove work dir \(not run: --keep-vm keeps the VM as the steps left it\)\n/)
    expect(result.stdout).toContain(`    shell:     vm-pool ssh ${name} --provider fake\n`)
    // What the failed run left (cleanup would have removed work/) is still there.
    const look = await vmPool(['ssh', name!, '-p', 'fake', '--', 'cat', 'work/out'])
    expect(look.exitCode, String(look.stderr)).toBe(0)
    expect(look.stdout).toBe('compiled')
    expect((await vmPool(['rm', name!, '-p', 'fake'])).exitCode).toBe(0)
    expect(await leftoverVms()).toEqual([])
  }, 60_000)

  test('--help explains the command', async () => {
    const result = await vmPool(['run', '--help'])
    expect(result.exitCode).toBe(0)
    for (const text of ['Usage: vm-pool run <workflow.yml>...', '--provider NAME', '--keep-vm', '--max-concurrent N', '--json', 'Exit codes:', 'cleanup ALWAYS runs', 'timeout-seconds']) {
      expect(result.stdout).toContain(text)
    }
    const main = await vmPool(['--help'])
    expect(main.stdout).toMatch(/\n  run\s+run workflow files, each on exactly one VM\n/)
  })

  test('bad usage, a missing file, bad YAML, a bad schema and an unknown provider: exit 2, a clear message, no stack, nothing run', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['run'], /^vm-pool run: missing workflow file: vm-pool run <workflow\.yml>\.\.\.\nRun 'vm-pool run --help' for usage\.$/],
      [['run', '-p', 'fake', '--max-concurrent', 'two', 'run-tests.yml'], /--max-concurrent must be a whole number of at least 1, got "two"/],
      [['run', '-p', 'fake', 'missing.yml'], /^\[vm-pool\] cannot read workflow file missing\.yml: no such file\n/],
      [['run', '-p', 'fake', 'bad-yaml.yml'], /^\[vm-pool\] invalid YAML in bad-yaml\.yml:7:1: .*\n  7 \| cleanup: \[\]\n/],
      [['run', '-p', 'fake', 'run-tests.yml', 'bad-schema.yml'], /bad-schema\.yml:7:22: steps\[2\]\.timeout-seconds: expected a positive number\n[\s\S]*nothing was run \(1 of 2 workflow files invalid\)/],
      [['run', '-p', 'nope', 'run-tests.yml'], /^\[vm-pool\] unknown provider "nope"\n  hint: choose one of: .*fake/],
    ]
    for (const [args, message] of cases) {
      const result = await vmPool(args)
      expect({ args, exitCode: result.exitCode }).toEqual({ args, exitCode: 2 })
      expect(result.stderr).toMatch(message)
      expect(result.stderr).not.toMatch(/\n\s+at /)
      expect(result.stdout).toBe('')
    }
    expect(await leftoverVms()).toEqual([])
  })

  test('a bad VM_POOL_TIMEOUT_SCALE is bad usage: exit 2 naming the value, nothing run', async () => {
    const result = await vmPool(['run', '-p', 'fake', 'run-tests.yml'], { env: { VM_POOL_TIMEOUT_SCALE: 'abc' } })
    expect(result.exitCode).toBe(2)
    expect(result.stderr).toBe('[vm-pool] VM_POOL_TIMEOUT_SCALE must be a positive number, got "abc"')
    expect(result.stdout).toBe('')
    expect(await leftoverVms()).toEqual([])
  })

  test.each([
    ['VM_POOL_TIMEOUT_SCALE=1000, default step timeout', '1000', ''],
    ['timeout-seconds: 604800 with a scale of 4', '4', '\n    timeout-seconds: 604800'],
  ])('a scaled timeout past what a Node timer holds is clamped, not fired at once: %s', async (_, scale, timeout) => {
    const file = join(stateDir, 'long-timeout.yml')
    await writeFile(file, `name: long-timeout\nsteps:\n  - name: wait a moment\n    run: sleep 0.3 && echo waited${timeout}\n`)
    const result = await vmPool(['run', '-p', 'fake', file], { env: { VM_POOL_TIMEOUT_SCALE: scale } })
    expect(result.stdout).toMatch(/^\[long-timeout\] step +ok +exit 0 .*wait a moment$/m)
    expect(result.exitCode).toBe(0)
    // Said once, however many timeouts were clamped.
    expect(String(result.stderr).split('VMPOOL_TIMEOUT_CLAMPED')).toHaveLength(2)
    expect(result.stderr).toContain('clamped to 2147483647 ms')
    expect(result.stderr).not.toContain('TimeoutOverflowWarning')
    expect(await leftoverVms()).toEqual([])
  })

  test('control characters in names, commands, output and quoted input are printed escaped: no forged lines', async () => {
    const forged = 'vm-pool run: 1 workflow, 1 succeeded in 0.1 s'
    const evil = join(stateDir, 'evil.yml')
    await writeFile(
      evil,
      [
        `name: "evil\\n${forged}"`,
        'steps:',
        `  - name: "step\\r${forged}"`,
        '    run: "printf \'out\\\\r%s\\\\n\' \\"$FORGED\\"; exit 3"',
        '    env: { FORGED: "' + forged + '" }',
        '  - run: "echo \\"a\\x1b[2Jb\\""',
        '',
      ].join('\n'),
    )
    const result = await vmPool(['run', '-p', 'fake', evil])
    expect(result.exitCode).toBe(1)
    const stdout = String(result.stdout)
    expect(stdout).not.toMatch(/[\r\u001b]/)
    // The one summary line is the real one; the forged text only appears escaped, inside other lines.
    expect(stdout.split('\n').filter((line) => line.startsWith('vm-pool run:'))).toEqual([expect.stringMatching(/^vm-pool run: 1 workflow, 0 succeeded, 1 failed /)])
    expect(stdout).toContain(`[evil\\n${forged}] step    FAIL  exit 3`)
    expect(stdout).toContain(`step\\r${forged}`)
    expect(stdout).toContain(`    stdout | out\\r${forged}`)
    expect(stdout).toContain('echo "a\\e[2Jb"')

    // Input quoted in an error message: a key (and a file name) with line breaks.
    const badKey = join(stateDir, `bad\n${forged}.yml`)
    await writeFile(badKey, `name: x\nsteps:\n  - run: "true"\n    "bo\\ngus\\n${forged}": 1\n`)
    const bad = await vmPool(['run', '-p', 'fake', badKey])
    expect(bad.exitCode).toBe(2)
    const stderr = String(bad.stderr)
    expect(stderr.split('\n').filter((line) => line.startsWith('vm-pool run:'))).toEqual(['vm-pool run: nothing was run (1 of 1 workflow files invalid)'])
    expect(stderr).toContain(`bad\\n${forged}.yml:4:5: steps[0].bo\\ngus\\n${forged}: unknown key`)
    expect(await leftoverVms()).toEqual([])
  })

  test('DEBUG=vm-pool* shows the stack trace', async () => {
    const result = await vmPool(['run', '-p', 'nope', 'run-tests.yml'], { env: { DEBUG: 'vm-pool*' } })
    expect(result.exitCode).toBe(2)
    expect(result.stderr).toMatch(/\n\s+at /)
  })

  test('SIGINT during a long step: the step is killed, cleanup runs, the VM is deleted, exit 130', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vm-pool-cli-sigint-'))
    const started = join(dir, 'started')
    const cleaned = join(dir, 'cleaned')
    const file = join(dir, 'long.yml')
    // The long step records its pid so we can check it was killed, not left running.
    await writeFile(
      file,
      `name: long
steps:
  - name: quick
    run: echo quick
  - name: long
    run: echo $$ > ${started}.tmp && mv ${started}.tmp ${started} && exec sleep 60
  - name: never
    run: echo never
cleanup:
  - name: teardown
    run: touch ${cleaned} && echo cleaned
`,
    )
    onTestFinished(() => rm(dir, { recursive: true, force: true }))
    const child = vmPool(['run', '-p', 'fake', file])
    await waitForFile(started, child)
    const stepPid = Number((await readFile(started, 'utf8')).trim())
    expect(isAlive(stepPid)).toBe(true)
    child.kill('SIGINT')
    const result = await child
    expect(result.exitCode).toBe(130)
    expect(result.stderr).toContain('vm-pool: SIGINT, cleaning up')
    const stdout = String(result.stdout)
    expect(stdout).toMatch(/\[long\] step\s+FAIL\s+exit -\s+\d+ m?s\s+long\n    error  \| \[vm-pool\] \[fake\] exec was aborted/)
    expect(stdout).toMatch(/\[long\] step\s+skip\s+never\n/)
    expect(stdout).toMatch(/\[long\] cleanup\s+ok\s+exit 0\s+\d+ ms\s+teardown\n/)
    expect(stdout).toMatch(/\[long\] vm vm-pool-wf-[0-9a-z]{8}-1 deleted\n/)
    expect(stdout).toContain('interrupted: running commands killed, cleanup ran')
    expect((await stat(cleaned)).isFile()).toBe(true)
    expect(isAlive(stepPid)).toBe(false)
    expect(await leftoverVms()).toEqual([])
  })
})

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** Poll for a file the workflow writes, failing early if the CLI already exited. */
async function waitForFile(path: string, child: ReturnType<typeof vmPool>): Promise<void> {
  let exited = false
  void child.then(() => {
    exited = true
  })
  while (!existsSync(path)) {
    if (exited) throw new Error(`vm-pool run exited before ${path} appeared:\n${String((await child).stdout)}\n${String((await child).stderr)}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
