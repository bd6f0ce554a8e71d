import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { findPytest, REPO, runPytest } from '../helpers/pytest-fixture.js'

/** The plugin's own tests in python/tests (helper lookup, the Node.js check, options and ini values, the protocol client against a helper that dies), run by real pytest against the pip-installed package. */
const pytest = findPytest()

describe.skipIf(pytest.missing !== undefined)('python/tests', () => {
  test('pass', { timeout: 300_000 }, async () => {
    const run = await runPytest(join(REPO, 'python/tests'), { python: pytest.python!, args: ['-q', '-p', 'no:xdist'] })
    expect(run.exitCode, run.output()).toBe(0)
    expect(run.stdout).toMatch(/\d+ passed/)
    expect(run.stdout).not.toMatch(/failed|error/)
  })
})
