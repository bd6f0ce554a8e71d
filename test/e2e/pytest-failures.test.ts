import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { beforeAll, describe, expect, onTestFinished, test } from 'vitest'
import { ensureDistBuilt } from '../../fixtures/pool/harness.js'
import { findPytest, runPytest, type PytestRun } from '../helpers/pytest-fixture.js'

/**
 * What a user reads when a test fails (fixtures/pytest-failures, fake provider): a failed `check()` names the
 * command and the VM, and the traceback ends at the test's line; a VM that cannot be made is its one line per
 * test, once — not the same line twice under "During handling of the above exception".
 */
const pytest = findPytest()

function runWithCreateFault(create: boolean | string): Promise<PytestRun> {
  const stateDir = mkdtempSync(join(tmpdir(), 'vm-pool-pytest-failures-state-'))
  onTestFinished(() => rmSync(stateDir, { recursive: true, force: true }))
  const options = { stateDir, bootDelayMs: 0, faults: { create } }
  return runPytest('failures', { python: pytest.python!, args: ['-p', 'no:xdist', '-rA'], stateDir, env: { VM_POOL_PROVIDER_OPTIONS: JSON.stringify(options) } })
}

/** The report section of one test (from its `___ name ___` header to the next header). */
function section(output: string, title: RegExp): string {
  const lines = output.split('\n')
  const start = lines.findIndex((line) => /^_{3,} .* _{3,}$/.test(line) && title.test(line))
  expect(start, output).toBeGreaterThanOrEqual(0)
  const end = lines.findIndex((line, i) => i > start && (/^_{3,} .* _{3,}$/.test(line) || /^={3,}/.test(line)))
  return lines.slice(start, end).join('\n')
}

// Outside CI only (findPytest throws in CI): the title says what is missing.
describe.skipIf(pytest.missing !== undefined)(`pytest-vm-pool: what a failing test shows${pytest.missing ? ` (skipped: ${pytest.missing})` : ''}`, () => {
  beforeAll(async () => {
    await ensureDistBuilt()
  }, 180_000)

  test('a failed check() names the command and the VM, and the traceback ends in the test; a fresh VM that cannot be made is one line', { timeout: 300_000 }, async () => {
    const run = await runWithCreateFault('pytest-fresh')
    expect(run.exitCode, run.output()).toBe(1)
    const failed = section(run.stdout, /test_a_command_fails/)
    expect(failed).toMatch(/^E\s+pytest_vm_pool\.vm\.ExecFailed: command `sh -c 'echo to-stdout; echo to-stderr >&2; exit 3'` in pytest-worker-\d+-\d+ exited with 3$/m)
    expect(failed).toMatch(/^E\s+to-stdout$/m)
    expect(failed).toMatch(/^E\s+to-stderr$/m)
    expect(failed).not.toMatch(/pytest_vm_pool[/\\]vm\.py/)
    const errored = section(run.stdout, /ERROR at setup of test_a_fresh_vm_cannot_be_made/)
    expect(errored.match(/injected create failure for pytest-fresh-/g), errored).toHaveLength(1)
    expect(errored).not.toMatch(/During handling|Traceback/)
    expect(run.stdout).toMatch(/1 failed, 1 error/)
  })

  test('a worker VM that cannot be made: each test that needed it shows the one line, once', { timeout: 300_000 }, async () => {
    const run = await runWithCreateFault('pytest-worker')
    expect(run.exitCode, run.output()).toBe(1)
    const errored = section(run.stdout, /ERROR at setup of test_a_command_fails/)
    expect(errored.match(/vm-pool: \[fake\] injected create failure for pytest-worker-/g), errored).toHaveLength(1)
    expect(errored).not.toMatch(/During handling|Traceback/)
    expect(run.stdout).toMatch(/1 passed, 1 error/)
  })
})
