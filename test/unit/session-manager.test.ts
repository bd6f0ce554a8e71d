import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { countingProvider, type CountingProvider } from '../../src/providers/counting-provider.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { SessionManager, type WorkflowSession } from '../../src/workflow/session-manager.js'
import type { VmAllocator } from '../../src/workflow/vm-allocator.js'

let stateDir: string
let provider: CountingProvider

beforeEach(async () => {
  stateDir = await mkdtemp(join(tmpdir(), 'vm-pool-sessions-'))
  provider = countingProvider(fakeProvider({ stateDir }))
})

afterEach(async () => {
  await rm(stateDir, { recursive: true, force: true })
})

async function rejection(promise: Promise<unknown>) {
  try {
    await promise
  } catch (error) {
    return error
  }
  throw new Error('expected a rejection')
}

describe('SessionManager', () => {
  test('a session owns one VM named vm-pool-wf-<runId>-<n>, created when it opens and deleted on release', async () => {
    const sessions = new SessionManager({ provider, runId: 'r1' })
    const session = await sessions.openSession()
    expect(session.vm.name).toBe('vm-pool-wf-r1-1')
    expect(provider.stats).toMatchObject({ created: 1, live: 1 })
    // The VM works before any workflow command: exec on it reports its own name.
    expect((await session.vm.exec('echo $VM_POOL_VM')).stdout.trim()).toBe('vm-pool-wf-r1-1')
    await session.release()
    await session.release() // idempotent
    expect(session.released).toBe(true)
    expect(provider.stats).toMatchObject({ created: 1, deleted: 1, live: 0 })
    expect(await provider.list()).toEqual([])
    expect((await sessions.openSession()).vm.name).toBe('vm-pool-wf-r1-2')
  })

  test('a generated run id keeps two managers from colliding', async () => {
    const a = await new SessionManager({ provider }).openSession()
    const b = await new SessionManager({ provider }).openSession()
    expect(a.vm.name).toMatch(/^vm-pool-wf-[0-9a-f]{8}-1$/)
    expect(a.vm.name).not.toBe(b.vm.name)
    await Promise.all([a.release(), b.release()])
    expect(provider.stats.live).toBe(0)
  })

  test('keepVm leaves exactly that VM running', async () => {
    const sessions = new SessionManager({ provider, runId: 'keep' })
    const kept = await sessions.openSession()
    const other = await sessions.openSession()
    await kept.release({ keepVm: true })
    await other.release()
    expect(provider.liveNames()).toEqual([kept.vm.name])
    expect((await provider.list()).map((vm) => vm.name)).toEqual([kept.vm.name])
    expect(sessions.activeSessions).toBe(0)
    await provider.delete(kept.vm.name)
  })

  test('reject mode: past the limit openSession fails with VMPOOL_SESSION_LIMIT naming the limit', async () => {
    const sessions = new SessionManager({ provider, maxConcurrentSessions: 2, onLimit: 'reject', runId: 'rej' })
    const first = await sessions.openSession()
    const second = await sessions.openSession()
    const error = await rejection(sessions.openSession())
    expect(isVmPoolError(error, 'VMPOOL_SESSION_LIMIT')).toBe(true)
    expect((error as Error).message).toContain('maxConcurrentSessions is 2')
    expect(provider.stats.created).toBe(2)
    await first.release()
    const third = await sessions.openSession()
    expect(provider.stats.live).toBe(2)
    await Promise.all([second.release(), third.release()])
    expect(provider.stats.live).toBe(0)
  })

  test('queue mode: waiters get slots in FIFO order, never more than the limit live', async () => {
    const sessions = new SessionManager({ provider, maxConcurrentSessions: 1, onLimit: 'queue', runId: 'q' })
    const first = await sessions.openSession()
    const order: number[] = []
    const waiting = [1, 2, 3].map((i) =>
      sessions.openSession().then((session) => {
        order.push(i)
        expect(provider.stats.live).toBe(1)
        return session
      }),
    )
    expect(sessions.queuedSessions).toBe(3)
    let current: WorkflowSession = first
    for (const next of waiting) {
      await current.release()
      current = await next
    }
    await current.release()
    expect(order).toEqual([1, 2, 3])
    expect(provider.stats).toMatchObject({ created: 4, live: 0 })
  })

  test('queue mode: a waiter past queueTimeoutMs fails with VMPOOL_QUEUE_TIMEOUT and leaves the queue', async () => {
    const sessions = new SessionManager({ provider, maxConcurrentSessions: 1, queueTimeoutMs: 50, runId: 'qt' })
    const held = await sessions.openSession()
    const error = await rejection(sessions.openSession())
    expect(isVmPoolError(error, 'VMPOOL_QUEUE_TIMEOUT')).toBe(true)
    expect((error as Error).message).toContain('(QUEUE_TIMEOUT_MS)')
    expect(sessions.queuedSessions).toBe(0)
    await held.release()
    expect(sessions.activeSessions).toBe(0)
    expect(provider.stats).toMatchObject({ created: 1, live: 0 })
  })

  test('aborting a queued openSession rejects with VMPOOL_ABORTED and creates nothing', async () => {
    const sessions = new SessionManager({ provider, maxConcurrentSessions: 1, runId: 'ab' })
    const held = await sessions.openSession()
    const controller = new AbortController()
    const queued = sessions.openSession({ signal: controller.signal })
    controller.abort(new Error('SIGINT'))
    const error = await rejection(queued)
    expect(isVmPoolError(error, 'VMPOOL_ABORTED')).toBe(true)
    await held.release()
    expect(provider.stats).toMatchObject({ created: 1, live: 0 })
    expect(sessions.activeSessions).toBe(0)
  })

  test('an abort while the VM boots deletes the VM once it exists', async () => {
    const slow = countingProvider(fakeProvider({ stateDir, bootDelayMs: 200 }))
    const sessions = new SessionManager({ provider: slow, runId: 'boot' })
    const controller = new AbortController()
    const opening = sessions.openSession({ signal: controller.signal })
    controller.abort(new Error('SIGINT'))
    expect(isVmPoolError(await rejection(opening), 'VMPOOL_ABORTED')).toBe(true)
    expect(slow.stats).toMatchObject({ created: 1, deleted: 1, live: 0 })
    expect(sessions.activeSessions).toBe(0)
  })

  test('a failed create frees the slot and surfaces the provider error', async () => {
    const failing = countingProvider(fakeProvider({ stateDir, faults: { create: 'wf-bad-1' } }))
    const sessions = new SessionManager({ provider: failing, maxConcurrentSessions: 1, onLimit: 'reject', runId: 'bad' })
    expect(isVmPoolError(await rejection(sessions.openSession()), 'VMPOOL_CREATE_FAILED')).toBe(true)
    expect(sessions.activeSessions).toBe(0)
    const next = await sessions.openSession()
    expect(next.vm.name).toBe('vm-pool-wf-bad-2')
    await next.release()
  })

  test('VMs come from the allocator when one is given (the seam for the cross-process pool)', async () => {
    const allocated: string[] = []
    const released: Array<{ name: string; keep: boolean }> = []
    const inner = fakeProvider({ stateDir })
    const allocator: VmAllocator = {
      async allocate(spec) {
        allocated.push(spec.name)
        const vm = await inner.connect(await inner.create(spec))
        return {
          vm,
          async release({ keepVm }) {
            released.push({ name: vm.name, keep: keepVm })
            await inner.delete(vm.name)
          },
        }
      },
    }
    const sessions = new SessionManager({ provider, allocator, runId: 'alloc', spec: { labels: { team: 'ci' } } })
    const session = await sessions.openSession()
    expect(session.vm.record.spec).toEqual({ name: 'vm-pool-wf-alloc-1', labels: { team: 'ci' } })
    await session.release({ keepVm: true })
    expect(allocated).toEqual(['vm-pool-wf-alloc-1'])
    expect(released).toEqual([{ name: 'vm-pool-wf-alloc-1', keep: true }])
    expect(provider.stats.created).toBe(0)
  })

  test('openSession({ spec }) gives that session its own VM spec over the manager\'s; a bad one fails before a slot is taken', async () => {
    const specs: unknown[] = []
    const allocator: VmAllocator = {
      async allocate(spec) {
        specs.push(spec)
        const record = await provider.create(spec)
        const vm = await provider.connect(record)
        return { vm, release: () => provider.delete(vm.name) }
      },
    }
    const sessions = new SessionManager({ provider, runId: 'spec', allocator, maxConcurrentSessions: 1, spec: { image: 'minimal', cpus: 1 } })
    const session = await sessions.openSession({ spec: { cpus: 2, memoryMiB: 512 } })
    expect(specs).toEqual([{ image: 'minimal', cpus: 2, memoryMiB: 512, name: 'vm-pool-wf-spec-1' }])
    const error = await rejection(sessions.openSession({ spec: { cpus: 0 } }))
    expect(isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS')).toBe(true)
    expect((error as Error).message).toMatch(/invalid openSession spec: cpus/)
    expect(sessions.queuedSessions).toBe(0)
    await session.release()
  })

  test('options are validated: each problem names the option', () => {
    expect(() => new SessionManager({ provider, maxConcurrentSessions: 0 })).toThrow(/maxConcurrentSessions/)
    expect(() => new SessionManager({ provider, onLimit: 'wait' as never })).toThrow(/onLimit/)
    expect(() => new SessionManager({ provider: {} as never })).toThrow(/provider: expected a VmProvider/)
    expect(() => new SessionManager({ provider, runId: 'Has_Caps' })).toThrow(/runId/)
    expect(() => new SessionManager({ provider, bogus: 1 } as never)).toThrow(/bogus/)
    expect(() => new SessionManager({ provider, runId: 'x'.repeat(60) })).toThrow(/invalid VM name/)
  })
})
