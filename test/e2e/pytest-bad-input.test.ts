import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ensureDistBuilt } from '../../fixtures/pool/harness.js'
import { getPostgresSkipReason, startPostgres, type StartedPostgres } from '../helpers/postgres.js'
import { CLI, findPytest, REPO, runPytest, type PytestRun } from '../helpers/pytest-fixture.js'

/**
 * A broken setup is ONE line from pytest with what to do, before any test runs — not a traceback per test:
 * fixtures/pytest-bad has tests that need VMs and one that does not.
 */
const pytest = findPytest()
const emptyDir = mkdtempSync(join(tmpdir(), 'vm-pool-empty-path-'))
afterAll(() => rmSync(emptyDir, { recursive: true, force: true }))

/** The run stopped at the setup check: exit 4 (pytest's usage error), one `ERROR: vm-pool: ...` line with a hint, no traceback, no test ran. */
function expectOneLineError(run: PytestRun, message: RegExp, hint: RegExp): string {
  const output = `${run.stdout}\n${run.stderr}`
  expect(run.exitCode, run.output()).toBe(4)
  const errors = output.split('\n').filter((line) => line.includes('vm-pool:'))
  expect(errors, run.output()).toHaveLength(1)
  const line = errors[0]!
  expect(line).toMatch(/^ERROR: vm-pool: .+ \(hint: .+\)$/)
  expect(line).toMatch(message)
  expect(line.slice(line.indexOf('(hint: '))).toMatch(hint)
  expect(output).not.toMatch(/Traceback|INTERNALERROR|^E\s/m)
  // pytest's counts ("1 passed"), not words of the message ("password authentication failed").
  expect(output).not.toMatch(/\d+ (passed|failed)/)
  return line
}

describe.skipIf(pytest.missing !== undefined)('pytest-vm-pool: a bad setup is one line', () => {
  beforeAll(async () => {
    await ensureDistBuilt()
  }, 180_000)

  test.for<{ how: string; args: string[]; env: Record<string, string> }>([
    { how: 'the option', args: ['--vm-pool-provider', 'nope'], env: {} },
    { how: 'VM_POOL_PROVIDER, with xdist', args: ['-n', '2'], env: { VM_POOL_PROVIDER: 'nope' } },
  ])('unknown provider ($how)', { timeout: 300_000 }, async ({ args, env }) => {
    const run = await runPytest('bad', { python: pytest.python!, args, env })
    expectOneLineError(run, /unknown provider "nope"/, /choose one of: .*qemu.*fake/)
  })

  test('missing image', { timeout: 300_000 }, async () => {
    const run = await runPytest('bad', { python: pytest.python!, args: ['--vm-pool-provider', 'qemu', '--vm-pool-image', 'no-such-image'], env: { VM_POOL_PROVIDER_OPTIONS: '' } })
    // Without QEMU installed the provider itself is what is missing; either way one line that says what to do.
    const line = expectOneLineError(run, /image "no-such-image"|qemu-system-x86_64 not found/, /docs\/qemu\.md|image build|apt-get install qemu/)
    if (!/qemu-system-x86_64 not found/.test(line)) expect(line).toMatch(/image "no-such-image" on qemu is not usable here: image "no-such-image" not found/)
  })

  test('Node.js missing: no node, no npx, no vm-pool on PATH', { timeout: 300_000 }, async () => {
    const run = await runPytest('bad', { python: pytest.python!, env: { PATH: emptyDir, VM_POOL_HELPER: '' } })
    expectOneLineError(run, /Node\.js was not found on PATH, and the vm-pool helper needs it/, /install Node\.js >= 22\.12/)
  })

  test('Node.js too old (the node on PATH says 20.0.0)', { timeout: 300_000 }, async () => {
    const run = await runPytest('bad', { python: pytest.python!, env: { PATH: `${join(REPO, 'fixtures/bin-old-node')}:/usr/bin:/bin`, VM_POOL_HELPER: `node '${CLI}'` } })
    expectOneLineError(run, /Node\.js 20\.0\.0 \(.*fixtures\/bin-old-node\/node\) is too old: the vm-pool helper needs >= 22\.12/, /install Node\.js >= 22\.12/)
  })

  test.for([
    { how: 'a helper path that does not exist', helper: '/nonexistent/vm-pool', message: /could not start the vm-pool helper '\/nonexistent\/vm-pool': No such file or directory/, hint: /VM_POOL_HELPER/ },
    { how: 'a helper that exits at once', helper: `'${process.execPath}' -e 'process.stderr.write("broken install\\n"); process.exit(3)'`, message: /the vm-pool helper exited with 3: broken install/, hint: /--help/ },
  ])('$how', { timeout: 300_000 }, async ({ helper, message, hint }) => {
    const run = await runPytest('bad', { python: pytest.python!, env: { VM_POOL_HELPER: helper } })
    expectOneLineError(run, message, hint)
  })

  test('a run whose tests need no VM never starts the helper, whatever the setup', { timeout: 300_000 }, async () => {
    const run = await runPytest('bad', { python: pytest.python!, args: ['-k', 'without_a_vm'], env: { VM_POOL_PROVIDER: 'nope', PATH: emptyDir, VM_POOL_HELPER: '' } })
    expect(run.exitCode, run.output()).toBe(0)
    expect(run.stdout).toMatch(/1 passed, 2 deselected/)
  })
})

/**
 * The lease store is part of the setup: VM_POOL_LEASE_STORE with a wrong password or a database that does not
 * exist stops the run at the check (it used to pass and fail every test that needed a VM), and the password
 * is nowhere in pytest's output.
 */
// Outside CI only (both helpers throw in CI): the title says what is missing.
const leaseStoreSkip = pytest.missing ?? getPostgresSkipReason()
describe.skipIf(leaseStoreSkip !== undefined)(`pytest-vm-pool: a bad lease store is one line${leaseStoreSkip ? ` (skipped: ${leaseStoreSkip})` : ''}`, () => {
  let server: StartedPostgres

  beforeAll(async () => {
    await ensureDistBuilt()
    server = await startPostgres()
  }, 180_000)

  afterAll(() => server?.stop())

  test.for([
    { how: 'a wrong password', url: () => server.url('postgres', 'not-the-password'), message: /lease store postgres:\/\/vmpool_test:\*\*\*@127\.0\.0\.1:\d+\/postgres .*password authentication failed/, hint: /user or password is wrong/, secret: 'not-the-password' },
    { how: 'a database that does not exist', url: () => server.url('no_such_db'), message: /database "no_such_db" does not exist/, hint: /createdb/, secret: () => server.password },
  ])('$how, with xdist and without', { timeout: 300_000 }, async ({ url, message, hint, secret }) => {
    const password = typeof secret === 'string' ? secret : secret()
    for (const args of [['-p', 'no:xdist'], ['-n', '2']]) {
      const run = await runPytest('bad', { python: pytest.python!, args, env: { VM_POOL_LEASE_STORE: url() } })
      expectOneLineError(run, message, hint)
      expect(run.output()).not.toContain(password)
    }
  })
})
