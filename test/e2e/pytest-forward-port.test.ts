import { beforeAll, describe, expect, test } from 'vitest'
import { ensureDistBuilt } from '../../fixtures/pool/harness.js'
import { findPytest, runPytest } from '../helpers/pytest-fixture.js'

/**
 * `worker_vm.forward_port(port)` from pytest: a web server in the VM reached from the test through a loopback
 * port, closed with its `with` block (fixtures/pytest-ports, fake provider). Needs `vm.forwardPort` on the
 * provider (the Vm contract's port forwarding).
 */
const pytest = findPytest()

describe.skipIf(pytest.missing !== undefined)('pytest-vm-pool forward_port', () => {
  beforeAll(async () => {
    await ensureDistBuilt()
  }, 180_000)

  test('a server in the worker VM, reached through forward_port, closed afterwards', { timeout: 300_000 }, async () => {
    const run = await runPytest('ports', { python: pytest.python!, args: ['-p', 'no:xdist'] })
    expect(run.exitCode, run.output()).toBe(0)
    expect(run.stdout).toMatch(/1 passed/)
    expect(run.liveVms()).toEqual([])
  })
})
