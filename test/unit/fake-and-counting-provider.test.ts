import { execFileSync } from 'node:child_process'
import { afterAll, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { countingProvider } from '../../src/providers/counting-provider.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { PROCESS_KILL_GRACE_MS } from '../../src/transport/process-runner.js'
import { scaleTimeout } from '../../src/util/timeouts.js'
import { makeStateDir } from '../../fixtures/pool/harness.js'
import { createProvider } from '../../src/providers/provider-registry.js'

// The harness's temp state dirs (removed with retries: a child process may still be finishing in one).
const stateDirs: ReturnType<typeof makeStateDir>[] = []
const tempStateDir = () => {
  const state = makeStateDir()
  stateDirs.push(state)
  return state.dir
}
afterAll(() => {
  for (const state of stateDirs.splice(0)) state.dispose()
})

describe('fakeProvider', () => {
  test('VMs are isolated directories: a file written in one is not in the other', async () => {
    const provider = fakeProvider({ stateDir: tempStateDir() })
    const a = await provider.connect(await provider.create({ name: 'iso-a' }))
    const b = await provider.connect(await provider.create({ name: 'iso-b' }))
    await a.exec('echo secret > note.txt')
    expect((await b.exec('cat note.txt')).exitCode).not.toBe(0)
    expect((await a.exec('cat note.txt; echo "$VM_POOL_VM"')).stdout).toBe('secret\niso-a\n')
  })

  test('another process sees and reaches the same VMs through the state directory', async () => {
    const stateDir = tempStateDir()
    const provider = fakeProvider({ stateDir })
    const record = await provider.create({ name: 'shared-1', labels: { owner: 'me' } })
    await (await provider.connect(record)).exec('echo from-parent > marker')
    const script = `
      const { fakeProvider } = await import(${JSON.stringify(new URL('../../dist/providers/fake-provider.js', import.meta.url).href)})
      const provider = fakeProvider({ stateDir: ${JSON.stringify(stateDir)} })
      const [info] = await provider.list()
      const vm = await provider.connect(info.record)
      process.stdout.write(JSON.stringify({ info, out: (await vm.exec('cat marker')).stdout }))`
    const child = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' }))
    expect(child.info).toMatchObject({ name: 'shared-1', state: 'running', labels: { owner: 'me' } })
    expect(child.out).toBe('from-parent\n')
  })

  test('creating a name twice is refused; connect and exec after delete say the VM is gone', async () => {
    const provider = fakeProvider({ stateDir: tempStateDir() })
    const record = await provider.create({ name: 'twice' })
    await expect(provider.create({ name: 'twice' })).rejects.toSatisfy((e) => isVmPoolError(e, 'VMPOOL_CREATE_FAILED'))
    const vm = await provider.connect(record)
    await provider.delete('twice')
    await expect(vm.exec('true')).rejects.toSatisfy((e) => isVmPoolError(e, 'VMPOOL_VM_NOT_FOUND'))
    await expect(provider.connect(record)).rejects.toSatisfy((e) => isVmPoolError(e, 'VMPOOL_VM_NOT_FOUND'))
  })

  test('failure injection: create and exec faults, and a boot delay', async () => {
    const provider = fakeProvider({ stateDir: tempStateDir(), bootDelayMs: 150, faults: { create: 'doomed', exec: 'explode' } })
    await expect(provider.create({ name: 'doomed-1' })).rejects.toSatisfy((e) => isVmPoolError(e, 'VMPOOL_CREATE_FAILED'))
    expect(await provider.list()).toEqual([])
    const started = Date.now()
    const vm = await provider.connect(await provider.create({ name: 'fine-1' }))
    expect(Date.now() - started).toBeGreaterThanOrEqual(140)
    await expect(vm.exec('echo explode')).rejects.toSatisfy((e) => isVmPoolError(e, 'VMPOOL_EXEC_FAILED'))
    expect((await vm.exec('echo fine')).stdout).toBe('fine\n')
  })

  test('a detached child holding stdout does not outlive timeoutMs or an abort (grace close)', async () => {
    const provider = fakeProvider({ stateDir: tempStateDir() })
    const vm = await provider.connect(await provider.create({ name: 'detached-holder' }))
    const strays: number[] = []
    // `setsid` moves the sleep out of the command's process group: the group kill misses it.
    const holder = 'setsid sleep 30 & echo "$!"; echo started'
    try {
      const timedOut = await vm.exec(holder, { timeoutMs: 500 })
      strays.push(Number(timedOut.stdout.split('\n')[0]))
      expect(timedOut).toMatchObject({ timedOut: true, exitCode: 124 })
      expect(timedOut.durationMs).toBeLessThan(500 + scaleTimeout(PROCESS_KILL_GRACE_MS) + 5_000)
      const controller = new AbortController()
      const started = performance.now()
      const aborted = vm.exec(holder, { signal: controller.signal, onStdout: (chunk) => strays.push(Number(chunk.split('\n')[0]) || 0) })
      setTimeout(() => controller.abort(), 500)
      await expect(aborted).rejects.toSatisfy((e) => isVmPoolError(e, 'VMPOOL_EXEC_ABORTED'))
      expect(performance.now() - started).toBeLessThan(500 + scaleTimeout(PROCESS_KILL_GRACE_MS) + 5_000)
    } finally {
      for (const pid of strays.filter((pid) => pid > 0)) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          // already gone
        }
      }
    }
  }, 30_000)

  test('bad options are refused with the key path', () => {
    expect(() => fakeProvider({ bootDelayMs: -1 })).toThrow(/bootDelayMs/)
    expect(() => fakeProvider({ nope: true } as never)).toThrow(/nope|unrecognized/i)
  })

  test('the registry builds providers by name and refuses unknown names', async () => {
    expect((await createProvider('fake', { stateDir: tempStateDir() })).name).toBe('fake')
    await expect(createProvider('vmware')).rejects.toThrow(/unknown provider "vmware"/)
  })
})

describe('countingProvider', () => {
  test('counts creates, deletes (once per VM) and live VMs', async () => {
    const provider = countingProvider(fakeProvider({ stateDir: tempStateDir() }))
    await provider.create({ name: 'c-1' })
    await provider.create({ name: 'c-2' })
    await expect(provider.create({ name: 'BAD' })).rejects.toThrow()
    expect(provider.stats).toMatchObject({ created: 2, deleted: 0, live: 2, names: ['c-1', 'c-2'] })
    await provider.delete('c-1')
    await provider.delete('c-1')
    await provider.delete('never-created')
    expect(provider.stats).toMatchObject({ created: 2, deleted: 1, live: 1 })
    expect(provider.liveNames()).toEqual(['c-2'])
  })
})
