/**
 * The contract every VmProvider passes (docs/providers.md). Each provider's test file calls
 * `describeProviderContract` with a factory; one VM is created for the exec checks (a real boot is the
 * expensive part), a second one for the create → list → delete → delete again → list lifecycle.
 */
import { randomBytes } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import type { Vm, VmProvider, VmRecord } from '../../src/providers/vm-provider.js'
import { describeInsideVmContract } from './inside-vm-contract.js'

export interface ProviderContractOptions {
  /** Time allowed for `create` (a real boot). @default 30_000 */
  createTimeoutMs?: number
  /** Spec fields passed to every create (image, memory...). */
  spec?: { image?: string; cpus?: number; memoryMiB?: number }
  /** Skip the whole suite with this printed reason (never in CI for providers CI can run). */
  skipReason?: string
  /** `unsupported`: the provider's tool cannot forward ports; forwardPort must say so (VMPOOL_UNSUPPORTED). @default 'supported' */
  forwardPort?: 'supported' | 'unsupported'
}

export function uniqueVmName(prefix = 'test-vm-contract'): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`
}

export function describeProviderContract(label: string, makeProvider: () => VmProvider | Promise<VmProvider>, options: ProviderContractOptions = {}): void {
  const createTimeoutMs = options.createTimeoutMs ?? 30_000
  describe.skipIf(Boolean(options.skipReason))(`provider contract: ${label}`, () => {
    let provider: VmProvider
    let record: VmRecord
    let vm: Vm
    const created: string[] = []

    beforeAll(async () => {
      provider = await makeProvider()
      const name = uniqueVmName()
      created.push(name)
      record = await provider.create({ name, ...options.spec })
      vm = await provider.connect(record)
    }, createTimeoutMs + 10_000)

    afterAll(async () => {
      await vm?.close?.()
      // Delete even when tests failed: nothing a test creates may outlive it.
      for (const name of created) await provider?.delete(name).catch(() => {})
      await provider?.close?.()
    }, 60_000)

    test('create returns a serializable record naming the VM and provider', () => {
      expect(record.name).toBe(created[0])
      expect(record.provider).toBe(provider.name)
      expect(JSON.parse(JSON.stringify(record))).toEqual(record)
      expect(vm.name).toBe(record.name)
      expect(vm.provider).toBe(provider.name)
    })

    test('exec of a shell line returns stdout, exit code and timing', async () => {
      const result = await vm.exec('echo hello; echo world')
      expect(result).toMatchObject({ exitCode: 0, stdout: 'hello\nworld\n', stderr: '', timedOut: false })
      expect(result.durationMs).toBeGreaterThanOrEqual(0)
    })

    test('non-zero exit codes are returned, not thrown', async () => {
      expect((await vm.exec('exit 3')).exitCode).toBe(3)
      expect((await vm.exec(['sh', '-c', 'exit 42'])).exitCode).toBe(42)
    })

    test('stdout and stderr are kept apart', async () => {
      const result = await vm.exec('echo out; echo err >&2; echo out2')
      expect(result.stdout).toBe('out\nout2\n')
      expect(result.stderr).toBe('err\n')
    })

    test('argv arrays are quoted safely: quotes, spaces and $() arrive intact', async () => {
      const words = ['a b', "it's", '$(echo pwned)', '"q"', '`id`', 'x;y', '', '*']
      const result = await vm.exec(['printf', '%s|', ...words])
      expect(result.exitCode).toBe(0)
      expect(result.stdout).toBe(words.map((word) => `${word}|`).join(''))
    })

    test('env variables reach the command verbatim', async () => {
      const result = await vm.exec('printf "%s/%s" "$FOO" "$BAR"', { env: { FOO: 'bar baz', BAR: "it's $HOME `x`" } })
      expect(result.stdout).toBe("bar baz/it's $HOME `x`")
    })

    test('cwd: relative to the home directory, or absolute', async () => {
      expect((await vm.exec('mkdir -p contract-work/sub')).exitCode).toBe(0)
      const relative = await vm.exec('pwd', { cwd: 'contract-work/sub' })
      expect(relative.stdout.trim()).toMatch(/\/contract-work\/sub$/)
      expect((await vm.exec('pwd', { cwd: '/' })).stdout).toBe('/\n')
      const missing = await vm.exec('pwd', { cwd: 'no-such-dir-here' })
      expect(missing.exitCode).not.toBe(0)
    })

    test('stdin input, as a string and as a Buffer', async () => {
      expect((await vm.exec('cat', { input: 'line1\nline2\n' })).stdout).toBe('line1\nline2\n')
      expect((await vm.exec(['wc', '-c'], { input: Buffer.alloc(100_000, 'x') })).stdout.trim()).toBe('100000')
    })

    test('streaming callbacks see the output as it comes', async () => {
      const out: string[] = []
      const err: string[] = []
      const result = await vm.exec('echo one; echo two >&2; echo three', { onStdout: (chunk) => out.push(chunk), onStderr: (chunk) => err.push(chunk) })
      expect(out.join('')).toBe(result.stdout)
      expect(err.join('')).toBe('two\n')
    })

    test('a timeout kills the command, reports timedOut, and the VM stays usable', async () => {
      const result = await vm.exec('sleep 30', { timeoutMs: 500 })
      expect(result.timedOut).toBe(true)
      expect(result.exitCode).toBe(124)
      expect(result.durationMs).toBeLessThan(15_000)
      expect((await vm.exec('echo still-here')).stdout).toBe('still-here\n')
    }, 30_000)

    test('an AbortSignal kills the command and rejects with VMPOOL_EXEC_ABORTED', async () => {
      const controller = new AbortController()
      // The marker is touched only once the gate exists, and the gate opens after the abort returned:
      // a busy machine cannot make the command finish before the kill arrives.
      const pending = vm.exec('while [ ! -e abort-gate ]; do sleep 0.1; done; touch abort-marker', { signal: controller.signal })
      setTimeout(() => controller.abort(new Error('stop')), 200)
      await expect(pending).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_EXEC_ABORTED'))
      expect((await vm.exec('touch abort-gate')).exitCode).toBe(0)
      await new Promise((resolve) => setTimeout(resolve, 1_500))
      expect((await vm.exec('test -e abort-marker && echo present || echo absent')).stdout).toBe('absent\n')
      const already = AbortSignal.abort()
      await expect(vm.exec('true', { signal: already })).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_EXEC_ABORTED'))
    }, 30_000)

    describeInsideVmContract(
      () => vm,
      () => provider.connect(record),
      { forwardPort: options.forwardPort ?? 'supported' },
    )

    test('a bad name is refused before anything runs', async () => {
      await expect(provider.create({ name: 'Bad Name; $(rm -rf ~)' })).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_NAME'))
      await expect(provider.delete('../../etc')).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_NAME'))
    })

    test('lifecycle: create → list → delete → delete again → list', async () => {
      const name = uniqueVmName()
      created.push(name)
      const second = await provider.create({ name, ...options.spec })
      const listed = await provider.list()
      expect(listed.find((info) => info.name === name)).toMatchObject({ name, provider: provider.name, state: 'running' })
      expect(listed.some((info) => info.name === record.name)).toBe(true)
      await provider.delete(name)
      await provider.delete(name)
      expect((await provider.list()).some((info) => info.name === name)).toBe(false)
      await expect(provider.connect(second).then((gone) => gone.exec('true'))).rejects.toSatisfy((error) => isVmPoolError(error))
    }, createTimeoutMs + 30_000)
  })
}
