import { readFileSync } from 'node:fs'
import { describe, expect, test } from 'vitest'
import { isVmPoolError, type VmPoolError } from '../../src/errors.js'
import { matchesEvent, matchesPatterns } from '../../src/workflow/github/event-filter.js'
import { parseGithubWorkflow } from '../../src/workflow/github/load-github-workflow.js'
import { formatPlan, planGithubWorkflow } from '../../src/workflow/github/plan-github-workflow.js'
import { parseRunsOnMapping } from '../../src/workflow/github/runs-on-mapping.js'
import { buildStepCommand, checkShell } from '../../src/workflow/github/step-shell.js'
import { checkWebhookSignature, signWebhookBody } from '../../src/cli/webhook/webhook-signature.js'

function errorOf(fn: () => unknown): VmPoolError {
  try {
    fn()
  } catch (error) {
    if (isVmPoolError(error)) return error
    throw error
  }
  throw new Error('expected a VmPoolError, nothing was thrown')
}

const minimal = (job: string) => `on: push\njobs:\n  build:\n${job}`

describe('parseGithubWorkflow', () => {
  test('normalizes jobs, steps, needs, matrix, triggers and defaults', () => {
    const workflow = parseGithubWorkflow(
      `name: ci
on:
  push: { branches: [main], tags: ['v*'] }
  pull_request:
env: { CI_LEVEL: 2 }
defaults: { run: { shell: bash } }
jobs:
  build:
    runs-on: [self-hosted, linux]
    timeout-minutes: 10
    strategy: { fail-fast: false, matrix: { os: [a, b], include: [{ os: c }], exclude: [{ os: b }] } }
    steps:
      - uses: actions/checkout@v4
        with: { path: src }
      - id: t
        run: make test
        working-directory: src
        continue-on-error: \${{ matrix.os == 'c' }}
  deploy:
    needs: build
    if: github.ref == 'refs/heads/main'
    runs-on: ubuntu-latest
    steps: [{ run: echo deploy }]
`,
      'ci.yml',
    )
    expect(workflow.name).toBe('ci')
    expect(workflow.triggers).toEqual({ push: { branches: ['main'], tags: ['v*'] }, pull_request: {} })
    expect(workflow.env).toEqual({ CI_LEVEL: '2' })
    expect(workflow.defaults).toEqual({ shell: 'bash' })
    const [build, deploy] = workflow.jobs
    expect(build).toMatchObject({ id: 'build', needs: [], runsOn: ['self-hosted', 'linux'], timeoutMinutes: 10, failFast: false, matrix: { dimensions: { os: ['a', 'b'] }, include: [{ os: 'c' }], exclude: [{ os: 'b' }] } })
    expect(build!.steps[0]).toMatchObject({ index: 0, uses: 'actions/checkout@v4', with: { path: 'src' }, where: 'ci.yml:13:9' })
    expect(build!.steps[1]).toMatchObject({ id: 't', run: 'make test', workingDirectory: 'src', continueOnError: "${{ matrix.os == 'c' }}" })
    expect(deploy).toMatchObject({ needs: ['build'], if: "github.ref == 'refs/heads/main'", runsOn: ['ubuntu-latest'] })
    expect(workflow.warnings).toEqual([])
  })

  test('unsupported or unknown syntax: every problem names its key, with file:line:col', () => {
    const error = errorOf(() =>
      parseGithubWorkflow(
        `on: push
jobs:
  build:
    runs-on: ubuntu-latest
    container: node:20
    steps:
      - run: echo \${{ matrix. }}
        working_directory: src
      - run: echo
        shell: pwsh
      - name: neither
  test:
    needs: [build, lint]
    steps:
      - run: echo \${{ hashFiles('x') }} \${{ secret.TOKEN }}
`,
        'ci.yml',
      ),
    )
    expect(error.code).toBe('VMPOOL_WORKFLOW_INVALID')
    expect(error.message).toContain('ci.yml:8:9: jobs.build.steps[0].working_directory: unknown key (did you mean "working-directory"?)')
    expect(error.message).toContain('ci.yml:11:9: jobs.build.steps[2]: a step needs `run:` or `uses:`')
    const second = errorOf(() => parseGithubWorkflow(minimal('    runs-on: x\n    container: node:20\n    services: { db: { image: postgres } }\n    steps: [{ run: echo }]\n'), 'c.yml'))
    expect(second.message).toContain('c.yml:5:5: jobs.build.container: not supported: vm-pool runs each job directly on its own VM')
    expect(second.message).toContain('c.yml:6:5: jobs.build.services: not supported')
    const third = errorOf(() =>
      parseGithubWorkflow(
        `on: push
jobs:
  build:
    steps:
      - run: echo \${{ matrix. }}
      - run: echo
        shell: pwsh
  test:
    needs: [build, lint]
    steps:
      - run: echo \${{ hashFiles('x') }} \${{ secret.TOKEN }}
`,
        'd.yml',
      ),
    )
    expect(third.message).toMatch(/d\.yml:9:5: jobs\.test\.needs: job "test" needs "lint", which is not a job of this workflow/)
    expect(third.message).toMatch(/d\.yml:7:9: jobs\.build\.steps\[1\]\.shell: pwsh is not supported/)
    expect(third.message).toMatch(/d\.yml:5:14: jobs\.build\.steps\[0\]\.run: invalid expression "matrix\.": expected a property name/)
    expect(third.message).toMatch(/d\.yml:11:14: jobs\.test\.steps\[0\]\.run: hashFiles\(\) is not supported/)
    expect(third.message).toMatch(/unknown context "secret"/)
    expect(third.message).not.toMatch(/\n\s+at /)
  })

  test("a context GitHub does not offer at a key is refused there, as GitHub refuses the file", () => {
    const text = `on: push
env:
  HOST_ID: \${{ github.run_id }}-\${{ strategy.job-index }}
jobs:
  build:
    if: matrix.os == 'x'
    strategy: { matrix: { os: [a, b] } }
    env:
      FROM_MATRIX: \${{ matrix.os }}
      FROM_ENV: \${{ env.HOST_ID }}
    steps:
      - if: secrets.TOKEN != ''
        run: echo \${{ env.FROM_MATRIX }} \${{ steps.x.outputs.y }} \${{ job.status }}
`
    const error = errorOf(() => parseGithubWorkflow(text, 'ctx.yml'))
    const lines = error.message.split('\n').filter((line) => line.includes('context is not available'))
    expect(lines).toEqual([
      '  ctx.yml:3:12: env.HOST_ID: the strategy context is not available here (GitHub refuses it; allowed: github, secrets, inputs, vars)',
      '  ctx.yml:6:9: jobs.build.if: the matrix context is not available here (GitHub refuses it; allowed: github, needs, inputs, vars)',
      '  ctx.yml:10:17: jobs.build.env.FROM_ENV: the env context is not available here (GitHub refuses it; allowed: github, needs, strategy, matrix, inputs, vars, secrets)',
      '  ctx.yml:12:13: jobs.build.steps[0].if: the secrets context is not available here (GitHub refuses it; allowed: github, needs, strategy, matrix, job, runner, env, steps, inputs, vars)',
    ])
    // Where GitHub offers them, the same contexts load.
    expect(() => parseGithubWorkflow(minimal('    strategy: { matrix: { os: [a] } }\n    env: { M: "${{ matrix.os }}-${{ strategy.job-index }}" }\n    steps:\n      - if: env.M != \'\'\n        run: echo ${{ env.M }} ${{ secrets.T }}\n'), 'ok.yml')).not.toThrow()
  })

  test("docs/github-actions.md's example loads (the docs show a file GitHub accepts)", () => {
    const docs = readFileSync(new URL('../../docs/github-actions.md', import.meta.url), 'utf8')
    const example = /```yaml\n([\s\S]*?)```/.exec(docs)![1]!
    const workflow = parseGithubWorkflow(example, 'github-actions.md')
    expect(workflow.jobs.map((job) => job.id)).toEqual(['warm', 'test', 'cleanup'])
  })

  test('needs cycles and a matrix from an expression are refused', () => {
    expect(errorOf(() => parseGithubWorkflow('on: push\njobs:\n  a: { needs: b, steps: [{ run: x }] }\n  b: { needs: a, steps: [{ run: x }] }\n', 'c.yml')).message).toMatch(/form a cycle: a → b → a/)
    expect(errorOf(() => parseGithubWorkflow(minimal('    strategy: { matrix: { os: "${{ fromJSON(needs.x.outputs.m) }}" } }\n    steps: [{ run: x }]\n'), 'm.yml')).message).toMatch(
      /m\.yml:4:31: jobs\.build\.strategy\.matrix\.os: a matrix list from a \$\{\{ \}\} expression is not supported/,
    )
  })

  test('another action is skipped with a warning, or refused with --strict; ignored keys warn', () => {
    const text = minimal('    environment: production\n    steps:\n      - uses: actions/setup-node@v4\n      - uses: actions/checkout@v4\n        with: { fetch-depth: 0 }\n      - run: echo ${{ secrets.TOKEN }}\n')
    const workflow = parseGithubWorkflow(text, 'w.yml')
    expect(workflow.warnings).toEqual([
      'w.yml:4:5: jobs.build.environment: ignored: deployment environments are not used',
      'w.yml:6:9: jobs.build.steps[0].uses: actions/setup-node@v4 is not run by vm-pool (only actions/checkout is): the step is skipped',
      'w.yml:8:17: jobs.build.steps[1].with.fetch-depth: ignored: vm-pool\'s checkout copies the tracked files of the working tree (inputs: path)',
      'w.yml:9:14: jobs.build.steps[2].run: secrets are not passed to VMs: every secrets.* is empty',
    ])
    const strict = errorOf(() => parseGithubWorkflow(text, 'w.yml', { strict: true }))
    expect(strict.message).toContain('w.yml:6:9: jobs.build.steps[0].uses: actions/setup-node@v4 is not run by vm-pool (only actions/checkout is): the step is skipped (an error with --strict)')
  })

  test('job outputs: a mapping of name to value, its expressions checked like the others', () => {
    const workflow = parseGithubWorkflow(minimal("    outputs:\n      version: ${{ steps.v.outputs.version }}\n      fixed: 3\n    steps: [{ id: v, run: x }]\n"), 'o.yml')
    expect(workflow.jobs[0]!.outputs).toEqual({ version: '${{ steps.v.outputs.version }}', fixed: '3' })
    expect(workflow.warnings).toEqual([])
    expect(parseGithubWorkflow(minimal('    steps: [{ run: x }]\n'), 'o.yml').jobs[0]!.outputs).toEqual({})
    expect(errorOf(() => parseGithubWorkflow(minimal('    outputs: [a, b]\n    steps: [{ run: x }]\n'), 'o.yml')).message).toMatch(/o\.yml:4:14: .*expected a mapping of name: value/)
    expect(errorOf(() => parseGithubWorkflow(minimal('    outputs: { "bad name": x }\n    steps: [{ run: x }]\n'), 'o.yml')).message).toMatch(/jobs\.build\.outputs\.bad name: invalid output name/)
    expect(errorOf(() => parseGithubWorkflow(minimal('    outputs: { v: "${{ step.x.outputs.y }}" }\n    steps: [{ run: x }]\n'), 'o.yml')).message).toMatch(/o\.yml:4:19: jobs\.build\.outputs\.v: .*unknown context "step"/)
  })

  test('the plan: --job and --matrix are checked, cells labelled, runs-on mapped', () => {
    const workflow = parseGithubWorkflow(
      minimal("    name: 'Build ${{ matrix.os }}'\n    runs-on: ${{ matrix.os }}\n    strategy: { matrix: { os: [ubuntu-latest, big] } }\n    steps: [{ run: x }]\n  lint:\n    steps: [{ run: x }]\n"),
      'p.yml',
    )
    const runsOn = parseRunsOnMapping('runs-on:\n  ubuntu-latest: { image: debian-12, cpus: 2, memory-mib: 2048 }\n', 'runners.yml')
    const plan = planGithubWorkflow(workflow, { runsOn })
    expect(plan.jobs[0]!.cells.map((cell) => [cell.label, cell.runsOn, cell.spec, cell.runner])).toEqual([
      ['Build ubuntu-latest', ['ubuntu-latest'], { image: 'debian-12', cpus: 2, memoryMiB: 2048 }, 'ubuntu-latest'],
      ['Build big', ['big'], {}, undefined],
    ])
    expect(formatPlan(plan)).toContain('    - Build ubuntu-latest  [os=ubuntu-latest]  runs-on: ubuntu-latest → image debian-12, 2 cpu, 2048 MiB (runs-on mapping "ubuntu-latest")')
    expect(planGithubWorkflow(workflow, { jobs: ['build'], matrix: { os: 'big' } }).jobs.map((job) => job.cells.length)).toEqual([1])
    expect(errorOf(() => planGithubWorkflow(workflow, { jobs: ['nope'] })).message).toMatch(/--job nope: p\.yml has no job "nope" \(jobs: build, lint\)/)
    expect(errorOf(() => planGithubWorkflow(workflow, { matrix: { os: 'mac' } })).message).toMatch(/no cell of job "build" matches; its cells: os=ubuntu-latest; os=big/)
    expect(errorOf(() => planGithubWorkflow(workflow, { matrix: { node: '20' } })).message).toMatch(/--matrix node: no selected job has this key/)
    expect(errorOf(() => parseRunsOnMapping('runs-on:\n  x: { memory: 1 }\n', 'r.yml')).message).toMatch(/r\.yml:2:6: .*memory/)
  })
})

describe('shells', () => {
  test('built-in shells and {0} templates; pwsh and a template without {0} are refused', () => {
    expect(checkShell('bash')).toBeUndefined()
    expect(checkShell('perl {0}')).toBeUndefined()
    expect(checkShell('cmd')).toMatch(/not supported/)
    expect(checkShell('perl')).toMatch(/must contain \{0\}/)
    expect(buildStepCommand("echo 'hi'", 'bash')).toBe(`exec bash --noprofile --norc -eo pipefail -c 'echo '\\''hi'\\'''`)
    expect(buildStepCommand('print(1)', 'python')).toContain('python3 "$f"')
  })
})

describe('on: filters (push, pull_request)', () => {
  const triggers = { push: { branches: ['main', 'release/**', '!release/**-rc'] }, pull_request: { branches: ['main'] } }
  test.each<[Record<string, object>, object, boolean]>([
    [triggers, { name: 'push', ref: 'refs/heads/main' }, true],
    [triggers, { name: 'push', ref: 'refs/heads/feature' }, false],
    [triggers, { name: 'push', ref: 'refs/heads/release/1.2' }, true],
    [triggers, { name: 'push', ref: 'refs/heads/release/1.2-rc' }, false],
    // Filtered on branches only: tag pushes do not run it.
    [triggers, { name: 'push', ref: 'refs/tags/v1' }, false],
    [{ push: { tags: ['v*'] } }, { name: 'push', ref: 'refs/tags/v1.0' }, true],
    [{ push: { tags: ['v*'] } }, { name: 'push', ref: 'refs/heads/main' }, false],
    [{ push: {} }, { name: 'push', ref: 'refs/tags/v1.0' }, true],
    [{ push: { branchesIgnore: ['wip/*'] } }, { name: 'push', ref: 'refs/heads/wip/x' }, false],
    [{ push: { branchesIgnore: ['wip/*'] } }, { name: 'push', ref: 'refs/heads/wip/x/y' }, true],
    [triggers, { name: 'pull_request', baseRef: 'main', action: 'opened' }, true],
    [triggers, { name: 'pull_request', baseRef: 'main', action: 'closed' }, false],
    [triggers, { name: 'pull_request', baseRef: 'dev', action: 'synchronize' }, false],
    [{ pull_request: { types: ['closed'] } }, { name: 'pull_request', baseRef: 'x', action: 'closed' }, true],
    [{ push: {} }, { name: 'pull_request', baseRef: 'main', action: 'opened' }, false],
  ])('%j, %j → %s', (on, event, expected) => {
    expect(matchesEvent(on as never, event as never)).toBe(expected)
  })

  test('glob patterns', () => {
    expect(matchesPatterns('feature/a', ['feature/*'])).toBe(true)
    expect(matchesPatterns('feature/a/b', ['feature/*'])).toBe(false)
    expect(matchesPatterns('feature/a/b', ['feature/**'])).toBe(true)
    expect(matchesPatterns('v1.2', ['v[12].?'])).toBe(true)
    expect(matchesPatterns('main.x', ['main'])).toBe(false)
  })
})

describe('webhook signature', () => {
  test('HMAC-SHA256 of the raw body; missing, malformed and wrong are told apart from valid', () => {
    const body = Buffer.from('{"zen":"Keep it logically awesome."}')
    const header = signWebhookBody('s3cret', body)
    expect(header).toMatch(/^sha256=[0-9a-f]{64}$/)
    expect(checkWebhookSignature('s3cret', body, header)).toBe('valid')
    expect(checkWebhookSignature('s3cret', body, header.toUpperCase().replace('SHA256', 'sha256'))).toBe('valid')
    expect(checkWebhookSignature('s3cret', body, undefined)).toBe('missing')
    expect(checkWebhookSignature('s3cret', body, '')).toBe('missing')
    expect(checkWebhookSignature('other', body, header)).toBe('invalid')
    expect(checkWebhookSignature('s3cret', Buffer.from(`${body} `), header)).toBe('invalid')
    expect(checkWebhookSignature('s3cret', body, 'sha1=abc')).toBe('invalid')
    expect(checkWebhookSignature('s3cret', body, `${header}00`)).toBe('invalid')
  })
})
