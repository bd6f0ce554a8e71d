import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, onTestFinished, test } from 'vitest'
import { isVmPoolError, type VmPoolError } from '../../src/errors.js'
import { defineWorkflow, loadWorkflow, parseWorkflow } from '../../src/workflow/load-workflow.js'

const fixture = (name: string) => join(import.meta.dirname, '../../fixtures/workflows', name)

function catchError(fn: () => unknown): VmPoolError {
  try {
    fn()
  } catch (error) {
    if (isVmPoolError(error)) return error
    throw error
  }
  throw new Error('expected a VmPoolError, nothing was thrown')
}

async function catchAsync(promise: Promise<unknown>): Promise<VmPoolError> {
  try {
    await promise
  } catch (error) {
    if (isVmPoolError(error)) return error
    throw error
  }
  throw new Error('expected a VmPoolError, nothing was thrown')
}

describe('parseWorkflow', () => {
  test('normalizes the DESIGN.md example: defaults filled in, kebab keys to camelCase, env values to strings', () => {
    const workflow = parseWorkflow(`
name: build-project
env: { CI: 1, VERBOSE: true, MODE: fast }
setup:   [ { run: "mkdir -p /work" } ]
steps:
  - name: Build
    run: make
    working-directory: /work
    continue-on-error: false
    timeout-seconds: 300
    env: { MODE: slow }
  - run: |
      make test
      make check
cleanup: [ { run: "rm -rf /work" } ]
`)
    expect(workflow).toEqual({
      name: 'build-project',
      env: { CI: '1', VERBOSE: 'true', MODE: 'fast' },
      setup: [{ name: 'mkdir -p /work', run: 'mkdir -p /work', continueOnError: false, env: {} }],
      steps: [
        { name: 'Build', run: 'make', workingDirectory: '/work', continueOnError: false, timeoutSeconds: 300, env: { MODE: 'slow' } },
        { name: 'make test', run: 'make test\nmake check\n', continueOnError: false, env: {} },
      ],
      cleanup: [{ name: 'rm -rf /work', run: 'rm -rf /work', continueOnError: false, env: {} }],
    })
  })

  test('malformed YAML names the source, line and column, and shows the line', () => {
    const error = catchError(() => parseWorkflow('name: x\nsteps:\n  - run: [make test\ncleanup: []\n', 'ci.yml'))
    expect(error.code).toBe('VMPOOL_WORKFLOW_INVALID')
    expect(error.message).toMatch(/invalid YAML in ci\.yml:4:1: /)
    expect(error.message).toContain('4 | cleanup: []')
    expect(error.details).toMatchObject({ source: 'ci.yml', line: 4, column: 1 })
  })

  test('an alias without its anchor, and an alias bomb, are VMPOOL_WORKFLOW_INVALID (not a raw ReferenceError)', () => {
    const undefinedAlias = catchError(() => parseWorkflow('name: x\nsteps:\n  - *step\n', 'ci.yml'))
    expect(undefinedAlias.code).toBe('VMPOOL_WORKFLOW_INVALID')
    expect(undefinedAlias.message).toMatch(/invalid YAML in ci\.yml:3:5: Unresolved alias/)
    expect(undefinedAlias.message).toContain('3 |   - *step')
    const ten = (name: string) => `[${Array(10).fill(`*${name}`).join(',')}]`
    const bomb = `a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b ${ten('a')}\nc: &c ${ten('b')}\nd: ${ten('c')}\nsteps: [{ run: x }]\n`
    const bombError = catchError(() => parseWorkflow(bomb, 'bomb.yml'))
    expect(bombError.code).toBe('VMPOOL_WORKFLOW_INVALID')
    expect(bombError.message).toContain('invalid YAML in bomb.yml: Excessive alias count')
  })

  test('a schema error names the key path and its line: steps[2].timeout-seconds', () => {
    const text = 'name: x\nsteps:\n  - run: a\n  - run: b\n  - run: c\n    timeout-seconds: -1\n'
    const error = catchError(() => parseWorkflow(text, 'ci.yml'))
    expect(error.code).toBe('VMPOOL_WORKFLOW_INVALID')
    expect(error.message).toContain('invalid workflow ci.yml:6:22: steps[2].timeout-seconds: expected a positive number')
  })

  test('a string timeout is refused too, not coerced', () => {
    const error = catchError(() => parseWorkflow('steps:\n  - run: a\n    timeout-seconds: "300"\n'))
    expect(error.message).toContain('steps[0].timeout-seconds: expected a positive number')
  })

  test('an unknown key is an error naming its path, with a suggestion and the allowed keys', () => {
    const error = catchError(() => parseWorkflow('name: x\nsteps:\n  - run: a\n    working_directory: /tmp\n', 'ci.yml'))
    expect(error.message).toContain('ci.yml:4:5: steps[0].working_directory: unknown key (did you mean "working-directory"?)')
    expect(error.message).toContain('allowed: name, run, working-directory, continue-on-error, timeout-seconds, env')
  })

  test('an unknown top-level key, and several problems at once, each with its line', () => {
    const error = catchError(() => parseWorkflow('name: x\njobs: {}\nsteps:\n  - name: a\n', 'ci.yml'))
    expect(error.message).toContain('invalid workflow ci.yml (2 problems):')
    expect(error.message).toContain('ci.yml:2:1: jobs: unknown key')
    expect(error.message).toContain('ci.yml:4:5: steps[0].run: run is required')
    expect(error.hint).toMatch(/each command has `run`/)
  })

  test('missing steps, empty steps, an empty document and a list are refused with what to write', () => {
    expect(catchError(() => parseWorkflow('name: x\n')).message).toContain('steps: required: a list of commands (- run: ...)')
    expect(catchError(() => parseWorkflow('name: x\nsteps: []\n')).message).toContain('steps: a workflow needs at least one step')
    expect(catchError(() => parseWorkflow('')).message).toContain('the workflow is empty')
    expect(catchError(() => parseWorkflow('- run: a\n')).message).toContain('expected a mapping with `name` and `steps`')
  })

  test('a `vm:` block (image, cpus, memory-mib, disk-gib) becomes the VM spec; left out: no spec', () => {
    const workflow = parseWorkflow('vm:\n  image: debian-12\n  cpus: 2\n  memory-mib: 1024\n  disk-gib: 4\nsteps:\n  - run: a\n')
    expect(workflow.vm).toEqual({ image: 'debian-12', cpus: 2, memoryMiB: 1024, diskGiB: 4 })
    expect(parseWorkflow('vm: { image: minimal }\nsteps:\n  - run: a\n').vm).toEqual({ image: 'minimal' })
    expect(parseWorkflow('steps:\n  - run: a\n').vm).toBeUndefined()
  })

  test('a bad `vm:` block is refused by path: unknown key with a suggestion, a bad value, not a mapping', () => {
    const unknown = catchError(() => parseWorkflow('vm:\n  memory_mib: 512\nsteps:\n  - run: a\n', 'ci.yml'))
    expect(unknown.message).toContain('ci.yml:2:3: vm.memory_mib: unknown key (did you mean "memory-mib"?); allowed: image, cpus, memory-mib, disk-gib')
    expect(catchError(() => parseWorkflow('vm:\n  cpus: 0\nsteps:\n  - run: a\n', 'ci.yml')).message).toContain('ci.yml:2:9: vm.cpus')
    expect(catchError(() => parseWorkflow('vm: debian-12\nsteps:\n  - run: a\n', 'ci.yml')).message).toContain('vm: expected a mapping with image, cpus, memory-mib, disk-gib')
  })

  test('a bad environment variable name is refused by path', () => {
    const error = catchError(() => parseWorkflow('env:\n  BAD-NAME: 1\nsteps:\n  - run: a\n', 'ci.yml'))
    expect(error.message).toContain('ci.yml:2:3: env.BAD-NAME: invalid environment variable name')
  })

  test('a step without a name is named after the first line of its command; the workflow after the file', () => {
    const workflow = parseWorkflow('steps:\n  - run: echo one\n', 'dir/my-flow.yaml')
    expect(workflow.name).toBe('my-flow')
    expect(workflow.source).toBe('dir/my-flow.yaml')
    expect(workflow.steps[0]!.name).toBe('echo one')
  })
})

describe('loadWorkflow', () => {
  test('loads the fixtures used by the run tests', async () => {
    const workflow = await loadWorkflow(fixture('build-project.yml'))
    expect(workflow.name).toBe('build-project')
    expect(workflow.steps).toHaveLength(5)
    expect(workflow.env).toEqual({ CI: '1' })
  })

  test('the bad fixtures give messages a user can act on', async () => {
    const yamlError = await catchAsync(loadWorkflow(fixture('bad-yaml.yml')))
    expect(yamlError.message).toMatch(/invalid YAML in .*bad-yaml\.yml:7:1: /)
    const schemaError = await catchAsync(loadWorkflow(fixture('bad-schema.yml')))
    expect(schemaError.message).toMatch(/bad-schema\.yml:7:22: steps\[2\]\.timeout-seconds: expected a positive number/)
    expect(schemaError.message).toMatch(/bad-schema\.yml:9:5: steps\[3\]\.working_directory: unknown key \(did you mean "working-directory"\?\)/)
  })

  test('a missing file and a directory are VMPOOL_WORKFLOW_INVALID naming the path', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vm-pool-wf-load-'))
    onTestFinished(() => rm(dir, { recursive: true, force: true }))
    const missing = await catchAsync(loadWorkflow(join(dir, 'nope.yml')))
    expect(missing.code).toBe('VMPOOL_WORKFLOW_INVALID')
    expect(missing.message).toContain(`cannot read workflow file ${join(dir, 'nope.yml')}: no such file`)
    expect((await catchAsync(loadWorkflow(dir))).message).toContain('it is a directory')
    await writeFile(join(dir, 'ok.yml'), 'steps: [{ run: "true" }]\n')
    expect((await loadWorkflow(join(dir, 'ok.yml'))).name).toBe('ok')
  })
})

describe('defineWorkflow', () => {
  test('validates a workflow written in code like a file', () => {
    expect(defineWorkflow({ name: 'w', steps: [{ run: 'make', 'timeout-seconds': 5 }] }).steps[0]).toEqual({
      name: 'make',
      run: 'make',
      timeoutSeconds: 5,
      continueOnError: false,
      env: {},
    })
    const error = catchError(() => defineWorkflow({ name: 'w', steps: [{ run: '' }] }))
    expect(error.message).toBe('[vm-pool] invalid workflow <workflow>: steps[0].run: run must not be empty\n  hint: ' + error.hint)
  })
})
