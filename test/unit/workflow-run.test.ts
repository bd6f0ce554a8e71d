import { execFileSync } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { countingProvider, type CountingProvider } from '../../src/providers/counting-provider.js'
import { fakeProvider, type FakeProviderOptions } from '../../src/providers/fake-provider.js'
import { multipassProvider } from '../../src/providers/multipass-provider.js'
import { orbstackProvider } from '../../src/providers/orbstack-provider.js'
import { defineWorkflow, loadWorkflow } from '../../src/workflow/load-workflow.js'
import { runWorkflow, STEP_OUTPUT_MAX_BYTES, type WorkflowEvent, type WorkflowResult } from '../../src/workflow/run-workflow.js'
import { SessionManager } from '../../src/workflow/session-manager.js'
import type { Workflow } from '../../src/workflow/workflow-schema.js'
import type { VmProvider, VmRecord } from '../../src/providers/vm-provider.js'

const fixture = (name: string) => loadWorkflow(join(import.meta.dirname, '../../fixtures/workflows', name))

let stateDir: string
let provider: CountingProvider

beforeEach(async () => {
  stateDir = await mkdtemp(join(tmpdir(), 'vm-pool-run-'))
  provider = countingProvider(fakeProvider({ stateDir }))
})

afterEach(async () => {
  vi.unstubAllEnvs()
  await rm(stateDir, { recursive: true, force: true })
})

function useProvider(options: FakeProviderOptions) {
  provider = countingProvider(fakeProvider({ stateDir, ...options }))
  return provider
}

/** Every command printed `$VM_POOL_VM <owner> …` from inside its VM: each must name the workflow's own VM and owner. */
function expectAllOnOwnVm(result: WorkflowResult) {
  const ran = result.steps.filter((step) => step.phase !== 'setup')
  expect(ran.length).toBeGreaterThan(0)
  for (const step of ran) {
    expect(step.vm).toBe(result.vm)
    expect(step.stdout.split(' ').slice(0, 2)).toEqual([result.vm, result.name])
  }
}

describe('runWorkflow: the seed verification matrix', () => {
  test('one workflow of 5 steps → 1 VM, every command on it', async () => {
    const sessions = new SessionManager({ provider })
    const result = await runWorkflow(await fixture('build-project.yml'), { sessions })
    expect(result.status).toBe('success')
    expect(result.steps.map((s) => s.phase)).toEqual(['setup', 'step', 'step', 'step', 'step', 'step', 'cleanup'])
    expectAllOnOwnVm(result)
    // The cleanup command counts the lines the 5 steps appended to one file: one filesystem, one VM.
    expect(result.steps.at(-1)!.stdout.trim()).toBe(`${result.vm} build-project 5`)
    expect(provider.stats).toMatchObject({ created: 1, deleted: 1, live: 0, names: [result.vm] })
  })

  test('workflows of 5, 3 and 7 steps in parallel → 3 distinct VMs, no command on another one', async () => {
    const sessions = new SessionManager({ provider, maxConcurrentSessions: 3 })
    let maxLive = 0
    const onEvent = () => {
      maxLive = Math.max(maxLive, provider.stats.live)
    }
    const workflows = await Promise.all(['build-project.yml', 'run-tests.yml', 'deploy.yml'].map(fixture))
    const results = await Promise.all(workflows.map((workflow) => runWorkflow(workflow, { sessions, onEvent })))
    expect(results.map((r) => r.steps.filter((s) => s.phase === 'step').length)).toEqual([5, 3, 7])
    for (const result of results) {
      expect(result.status).toBe('success')
      expectAllOnOwnVm(result)
    }
    expect(new Set(results.map((r) => r.vm)).size).toBe(3)
    expect(maxLive).toBe(3) // they really overlapped
    expect(provider.stats).toMatchObject({ created: 3, deleted: 3, live: 0 })
    expect([...provider.stats.names].sort()).toEqual(results.map((r) => r.vm).sort())
  })

  test('a workflow after another finished → its own VM, the first already deleted', async () => {
    const sessions = new SessionManager({ provider })
    const first = await runWorkflow(await fixture('run-tests.yml'), { sessions })
    expect(provider.stats.live).toBe(0)
    expect(await provider.list()).toEqual([])
    let liveAtSecondStart = -1
    const second = await runWorkflow(await fixture('run-tests.yml'), {
      sessions,
      onEvent: (event) => {
        if (event.type === 'session-open') liveAtSecondStart = provider.stats.live
      },
    })
    expect(second.vm).not.toBe(first.vm)
    expect(liveAtSecondStart).toBe(1)
    expectAllOnOwnVm(second)
    expect(provider.stats).toMatchObject({ created: 2, deleted: 2, live: 0 })
  })

  test('limit 2, reject mode: the third concurrent workflow is refused with an error naming the limit', async () => {
    const sessions = new SessionManager({ provider, maxConcurrentSessions: 2, onLimit: 'reject' })
    const workflows = await Promise.all(['build-project.yml', 'run-tests.yml', 'deploy.yml'].map(fixture))
    const settled = await Promise.allSettled(workflows.map((workflow) => runWorkflow(workflow, { sessions })))
    expect(settled.map((s) => s.status)).toEqual(['fulfilled', 'fulfilled', 'rejected'])
    const reason = (settled[2] as PromiseRejectedResult).reason
    expect(isVmPoolError(reason, 'VMPOOL_SESSION_LIMIT')).toBe(true)
    expect((reason as Error).message).toContain('maxConcurrentSessions is 2')
    expect(provider.stats).toMatchObject({ created: 2, live: 0 })
  })

  test('limit 2, queue mode: the third runs when a slot frees, never more than 2 VMs live', async () => {
    const sessions = new SessionManager({ provider, maxConcurrentSessions: 2, onLimit: 'queue' })
    const log: string[] = []
    const liveSamples: number[] = []
    const onEvent = (event: WorkflowEvent) => {
      liveSamples.push(provider.stats.live)
      if (event.type === 'session-open' || event.type === 'session-release') log.push(`${event.type} ${event.workflow}`)
    }
    // A sampler independent of events too, for the moments between commands.
    const sampler = setInterval(() => liveSamples.push(provider.stats.live), 1)
    const workflows = await Promise.all(['build-project.yml', 'run-tests.yml', 'deploy.yml'].map(fixture))
    const running = workflows.map((workflow) => runWorkflow(workflow, { sessions, onEvent }))
    expect(sessions.queuedSessions).toBe(1)
    const results = await Promise.all(running)
    clearInterval(sampler)
    expect(results.map((r) => r.status)).toEqual(['success', 'success', 'success'])
    for (const result of results) expectAllOnOwnVm(result)
    expect(Math.max(...liveSamples)).toBe(2)
    // deploy opened only after one of the first two had released its VM.
    const deployOpened = log.indexOf('session-open deploy')
    expect(log.slice(0, deployOpened).some((entry) => entry.startsWith('session-release'))).toBe(true)
    expect(provider.stats).toMatchObject({ created: 3, live: 0 })
  })

  test("the workflow's `vm:` block is the spec its VM is created with, over the session manager's spec", async () => {
    const specs: unknown[] = []
    const recording: VmProvider = { ...provider, create: (spec) => (specs.push(spec), provider.create(spec)) }
    const sessions = new SessionManager({ provider: recording, spec: { cpus: 1, labels: { team: 'a' } } })
    const workflow = defineWorkflow({ name: 'on-debian', vm: { image: 'debian-12', cpus: 2, 'memory-mib': 1024, 'disk-gib': 4 }, steps: [{ run: 'true' }] })
    const result = await runWorkflow(workflow, { sessions })
    expect(result.status).toBe('success')
    expect(specs).toEqual([{ name: result.vm, image: 'debian-12', cpus: 2, memoryMiB: 1024, diskGiB: 4, labels: { team: 'a' } }])
    await runWorkflow(defineWorkflow({ name: 'default-vm', steps: [{ run: 'true' }] }), { sessions })
    expect(specs[1]).toEqual({ name: expect.any(String), cpus: 1, labels: { team: 'a' } })
  })

  test('10 steps → 1 VM', async () => {
    const sessions = new SessionManager({ provider })
    const result = await runWorkflow(await fixture('ten-steps.yml'), { sessions })
    expect(result.steps.filter((s) => s.phase === 'step')).toHaveLength(10)
    expectAllOnOwnVm(result)
    expect(result.steps.at(-1)!.stdout.trim()).toBe(`${result.vm} ten-steps 10`)
    expect(provider.stats).toMatchObject({ created: 1, live: 0 })
  })
})

describe('runWorkflow: cleanup always runs', () => {
  test('after a failed setup: steps skipped, cleanup ran, VM deleted', async () => {
    const result = await runWorkflow(await fixture('setup-fails.yml'), { sessions: new SessionManager({ provider }) })
    expect(result.status).toBe('failure')
    expect(result.steps.map((s) => [s.phase, s.exitCode, s.skipped ?? false])).toEqual([
      ['setup', 100, false],
      ['step', -1, true],
      ['cleanup', 0, false],
    ])
    expect(result.steps[0]!.stderr).toBe('no such package\n')
    expect(result.steps[2]!.stdout).toBe('cleaned\n')
    expect(provider.stats.live).toBe(0)
  })

  test('after a failed step: later steps skipped, cleanup ran on the same VM', async () => {
    const result = await runWorkflow(await fixture('failing-step.yml'), { sessions: new SessionManager({ provider }) })
    expect(result.status).toBe('failure')
    expect(result.steps.map((s) => `${s.phase}:${s.name}:${s.skipped ? 'skipped' : s.exitCode}`)).toEqual([
      'setup:mkdir -p work:0',
      'step:compile:0',
      'step:test:3',
      'step:package:skipped',
      'cleanup:remove work dir:0',
    ])
    expect(result.steps[2]).toMatchObject({ stdout: 'running 3 tests\n', stderr: 'expected 42, got 41\n', vm: result.vm })
    expect(result.steps[4]!.stdout).toBe('cleaned\n')
    expect(provider.stats.live).toBe(0)
  })

  test('after an exec that throws: recorded with its error code, rest skipped, cleanup ran', async () => {
    useProvider({ faults: { exec: 'EXPLODE' } })
    const workflow = defineWorkflow({
      name: 'exec-throws',
      steps: [{ run: 'echo ok' }, { name: 'boom', run: 'echo EXPLODE' }, { run: 'echo never' }],
      cleanup: [{ run: 'echo cleaned' }],
    })
    const result = await runWorkflow(workflow, { sessions: new SessionManager({ provider }) })
    expect(result.status).toBe('failure')
    const boom = result.steps[1]!
    expect(boom).toMatchObject({ name: 'boom', exitCode: -1, error: { code: 'VMPOOL_EXEC_FAILED' } })
    expect(result.steps[2]!.skipped).toBe(true)
    expect(result.steps[3]).toMatchObject({ phase: 'cleanup', exitCode: 0, stdout: 'cleaned\n' })
    expect(provider.stats).toMatchObject({ created: 1, live: 0 })
  })

  test('a failing cleanup command fails the workflow but the next cleanup command still runs', async () => {
    const workflow = defineWorkflow({ name: 'cleanup-fails', steps: [{ run: 'true' }], cleanup: [{ run: 'exit 5' }, { run: 'echo second' }] })
    const result = await runWorkflow(workflow, { sessions: new SessionManager({ provider }) })
    expect(result.status).toBe('failure')
    expect(result.steps.slice(1).map((s) => [s.exitCode, s.stdout])).toEqual([
      [5, ''],
      [0, 'second\n'],
    ])
    expect(provider.stats.live).toBe(0)
  })

  test('after an abort: the running command is killed, the rest skipped, cleanup runs, VM deleted', async () => {
    const controller = new AbortController()
    const workflow = defineWorkflow({
      name: 'aborted',
      steps: [{ run: 'echo first' }, { name: 'long', run: 'sleep 30' }, { run: 'echo never' }],
      cleanup: [{ run: 'echo cleaned' }],
    })
    const result = await runWorkflow(workflow, {
      sessions: new SessionManager({ provider }),
      signal: controller.signal,
      onEvent: (event) => {
        if (event.type === 'command-start' && event.name === 'long') setTimeout(() => controller.abort(new Error('SIGINT')), 100)
      },
    })
    expect(result).toMatchObject({ status: 'failure', aborted: true })
    expect(result.steps[1]).toMatchObject({ name: 'long', error: { code: 'VMPOOL_EXEC_ABORTED' } })
    expect(result.steps[2]!.skipped).toBe(true)
    expect(result.steps[3]).toMatchObject({ phase: 'cleanup', exitCode: 0, stdout: 'cleaned\n' })
    expect(provider.stats).toMatchObject({ created: 1, live: 0 })
  })

  test('a queued workflow aborted before it got a VM rejects with VMPOOL_ABORTED; the running one cleans up', async () => {
    const controller = new AbortController()
    const sessions = new SessionManager({ provider, maxConcurrentSessions: 1 })
    const long = defineWorkflow({ name: 'long', steps: [{ run: 'sleep 30' }], cleanup: [{ run: 'echo cleaned' }] })
    const first = runWorkflow(long, {
      sessions,
      signal: controller.signal,
      onEvent: (event) => {
        if (event.type === 'command-start' && event.phase === 'step') setTimeout(() => controller.abort(new Error('SIGINT')), 50)
      },
    })
    const second = runWorkflow(long, { sessions, signal: controller.signal })
    const [a, b] = await Promise.allSettled([first, second])
    expect(a.status === 'fulfilled' && a.value.aborted && a.value.steps[1]!.stdout).toBe('cleaned\n')
    expect(b.status === 'rejected' && isVmPoolError(b.reason, 'VMPOOL_ABORTED')).toBe(true)
    expect(provider.stats).toMatchObject({ created: 1, live: 0 })
  })
})

describe('runWorkflow: step options', () => {
  test('a step printing 5 MB: onOutput sees every byte, the result keeps STEP_OUTPUT_MAX_BYTES of head and tail', async () => {
    const total = 5 * 1024 * 1024
    let seen = 0
    const streams = new Set<string>()
    const workflow = defineWorkflow({ name: 'loud', steps: [{ name: 'loud', run: `head -c ${total} /dev/zero | tr '\\0' y; echo oops >&2` }] })
    const result = await runWorkflow(workflow, {
      sessions: new SessionManager({ provider }),
      onOutput: (output) => {
        expect(output).toMatchObject({ workflow: 'loud', vm: expect.any(String), phase: 'step', name: 'loud' })
        streams.add(output.stream)
        if (output.stream === 'stdout') seen += output.chunk.length
      },
    })
    expect(result.status).toBe('success')
    expect(seen).toBe(total)
    expect([...streams].sort()).toEqual(['stderr', 'stdout'])
    const [step] = result.steps
    expect(step!.stdoutDroppedBytes).toBe(total - STEP_OUTPUT_MAX_BYTES)
    expect(step!.stderr).toBe('oops\n')
    expect(step!.stderrDroppedBytes).toBeUndefined()
    expect(Buffer.byteLength(step!.stdout)).toBeLessThan(STEP_OUTPUT_MAX_BYTES + 200)
  })

  test('continue-on-error, workflow + step env merged, working-directory', async () => {
    const result = await runWorkflow(await fixture('continue-on-error.yml'), { sessions: new SessionManager({ provider }) })
    expect(result.status).toBe('success')
    const [lint, greet, mk, cwd, cleanup] = result.steps
    expect(lint).toMatchObject({ exitCode: 1, continuedOnError: true })
    expect(greet!.stdout).toBe('hello step\n')
    expect(cwd!.stdout).toBe(mk!.stdout)
    expect(cwd!.stdout.trim()).toMatch(/\/sub\/dir$/)
    expect(cleanup!.stdout).toBe('cleaned\n')
    expect(provider.stats.live).toBe(0)
  })

  test('timeout-seconds kills a step (exit 124, timedOut), skips the rest, cleanup runs', async () => {
    const result = await runWorkflow(await fixture('step-timeout.yml'), { sessions: new SessionManager({ provider }) })
    expect(result.status).toBe('failure')
    expect(result.steps.map((s) => [s.name, s.skipped ? 'skipped' : s.exitCode, s.timedOut ?? false])).toEqual([
      ['echo before', 0, false],
      ['hangs', 124, true],
      ['echo after', 'skipped', false],
      ['echo cleaned', 0, false],
    ])
    expect(provider.stats.live).toBe(0)
  })

  test('timeout-seconds is scaled by VM_POOL_TIMEOUT_SCALE', async () => {
    vi.stubEnv('VM_POOL_TIMEOUT_SCALE', '0.01')
    const workflow = defineWorkflow({ name: 'scaled', steps: [{ run: 'sleep 20', 'timeout-seconds': 30 }] })
    const result = await runWorkflow(workflow, { sessions: new SessionManager({ provider }) })
    expect(result.steps[0]).toMatchObject({ exitCode: 124, timedOut: true })
  })

  test('keepVm leaves exactly that VM and says how to reach and delete it (that VM only)', async () => {
    const sessions = new SessionManager({ provider })
    const other = await runWorkflow(await fixture('run-tests.yml'), { sessions })
    const kept = await runWorkflow(await fixture('build-project.yml'), { sessions, keepVm: true })
    expect(kept.status).toBe('success')
    expect(provider.liveNames()).toEqual([kept.vm])
    expect(provider.liveNames()).not.toContain(other.vm)
    expect(kept.keptVm).toMatchObject({ name: kept.vm, provider: 'fake' })
    expect(kept.keptVm!.reach).toContain(String(kept.keptVm!.record.data.home))
    // Reachable from "another process": connect from the record and see what the workflow left.
    const vm = await provider.connect(kept.keptVm!.record)
    expect((await vm.exec('cat owner; wc -l < trace')).stdout).toBe('build-project\n5\n')
    // The printed delete command removes this VM and leaves another kept one alone.
    const alsoKept = await runWorkflow(await fixture('run-tests.yml'), { sessions, keepVm: true })
    expect(execFileSync('sh', ['-c', kept.keptVm!.remove], { encoding: 'utf8' })).toBe('')
    expect((await provider.list()).map((info) => info.name)).toEqual([alsoKept.vm])
    await provider.delete(alsoKept.vm)
  })

  test('keepVm: the delete instruction names that VM only, per provider', async () => {
    // A fake VM dressed as another provider's, with that provider's own describe (none for qemu).
    const keptOn = async (name: string, data: VmRecord['data'], describe?: VmProvider['describe']) => {
      const inner = fakeProvider({ stateDir })
      const renamed: VmProvider = {
        ...inner,
        name,
        describe,
        create: async (spec) => ({ ...(await inner.create(spec)), provider: name, data }),
        connect: async (record) => Object.assign(await inner.connect(record), { provider: name }),
      }
      const result = await runWorkflow(defineWorkflow({ name: 'k', steps: [{ run: 'true' }] }), { sessions: new SessionManager({ provider: renamed }), keepVm: true })
      await inner.delete(result.vm)
      return result.keptVm!.remove.replace(result.vm, 'NAME')
    }
    expect(await keptOn('multipass', { host: 'local' }, multipassProvider().describe)).toBe('multipass delete --purge NAME')
    expect(await keptOn('multipass', { host: 'ci@10.0.0.5:22' }, multipassProvider().describe)).toBe('multipass delete --purge NAME   (on ci@10.0.0.5:22)')
    expect(await keptOn('orbstack', {}, orbstackProvider().describe)).toBe('orbctl delete -f NAME')
    const qemu = await keptOn('qemu', {})
    expect(qemu).toContain("provider.delete('NAME')")
    expect(qemu).toContain('deletes every orphaned VM')
  })

  test('a VM that cannot be deleted makes the workflow fail with releaseError', async () => {
    const inner = fakeProvider({ stateDir })
    const undeletable = countingProvider({ ...inner, delete: async () => Promise.reject(new Error('disk on fire')) })
    const result = await runWorkflow(defineWorkflow({ name: 'leaky', steps: [{ run: 'true' }] }), { sessions: new SessionManager({ provider: undeletable }) })
    expect(result).toMatchObject({ status: 'failure', releaseError: { code: 'VMPOOL_INTERNAL', message: 'disk on fire' } })
    expect(result.steps[0]!.exitCode).toBe(0)
    await inner.delete(result.vm)
  })

  test('emits command-start and command-end for every command, in order, skipped ones included', async () => {
    const events: string[] = []
    await runWorkflow(await fixture('failing-step.yml'), {
      sessions: new SessionManager({ provider }),
      onEvent: (event) => {
        events.push(event.type === 'command-end' ? `end ${event.result.name}` : event.type === 'command-start' ? `start ${event.name}` : event.type)
        if (event.type === 'command-start') throw new Error('a broken listener must not break the run')
      },
    })
    expect(events).toEqual([
      'session-open',
      'start mkdir -p work',
      'end mkdir -p work',
      'start compile',
      'end compile',
      'start test',
      'end test',
      'end package',
      'start remove work dir',
      'end remove work dir',
      'session-release',
    ])
  })

  test('no VM at all when the options or the workflow are wrong', async () => {
    const sessions = new SessionManager({ provider })
    await expect(runWorkflow({ name: 'raw', steps: [{ run: 'x' }] } as unknown as Workflow, { sessions })).rejects.toThrow(/expects a parsed workflow/)
    await expect(runWorkflow(defineWorkflow({ steps: [{ run: 'x' }] }), { sessions, keepVm: 'yes' } as never)).rejects.toThrow(/keepVm/)
    vi.stubEnv('VM_POOL_TIMEOUT_SCALE', 'fast')
    await expect(runWorkflow(defineWorkflow({ steps: [{ run: 'x' }] }), { sessions })).rejects.toThrow(/VM_POOL_TIMEOUT_SCALE/)
    expect(provider.stats.created).toBe(0)
  })
})
