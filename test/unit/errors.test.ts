import { describe, expect, test } from 'vitest'
import { VmPoolError, VmPoolTimeoutError, invalidOptions, isVmPoolError } from '../../src/errors.js'

describe('VmPoolError', () => {
  test('message carries the prefixes and the hint; fields stay plain data', () => {
    const cause = new Error('connection refused')
    const error = new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: 'qemu', operation: 'create', vm: 'vitest-worker-a-1', message: 'QEMU exited', hint: 'run vm-pool doctor', cause })
    expect(error.message).toBe('[vm-pool] [qemu] QEMU exited\n  hint: run vm-pool doctor')
    expect(error).toMatchObject({ code: 'VMPOOL_CREATE_FAILED', provider: 'qemu', operation: 'create', vm: 'vitest-worker-a-1', shortMessage: 'QEMU exited' })
    expect(error.cause).toBe(cause)
    expect(error).toBeInstanceOf(Error)
  })

  test('survives a JSON round trip (worker → main process)', () => {
    const original = new VmPoolError({ code: 'VMPOOL_BOOT_TIMEOUT', provider: 'qemu', vm: 'x', message: 'no ssh', details: { port: 4022 }, cause: new TypeError('boom') })
    const copy = VmPoolError.fromJSON(JSON.parse(JSON.stringify(original)))
    expect(copy.message).toBe(original.message)
    expect(copy.code).toBe('VMPOOL_BOOT_TIMEOUT')
    expect(copy.details).toEqual({ port: 4022 })
    expect((copy.cause as Error).message).toBe('boom')
    expect(isVmPoolError(copy, 'VMPOOL_BOOT_TIMEOUT')).toBe(true)
  })

  test('isVmPoolError recognises the brand from another copy of the module, and rejects look-alikes', () => {
    const brand = Symbol.for('vm-pool.error')
    const foreign = Object.assign(new Error('x'), { code: 'VMPOOL_TIMEOUT', [brand]: true })
    expect(isVmPoolError(foreign)).toBe(true)
    expect(isVmPoolError(foreign, 'VMPOOL_TIMEOUT')).toBe(true)
    expect(isVmPoolError(foreign, 'VMPOOL_INTERNAL')).toBe(false)
    expect(isVmPoolError(Object.assign(new Error('x'), { code: 'VMPOOL_TIMEOUT' }))).toBe(false)
    expect(isVmPoolError(null)).toBe(false)
    expect(isVmPoolError('VMPOOL_TIMEOUT')).toBe(false)
  })

  test('timeout errors name the timeout and its length', () => {
    const error = new VmPoolTimeoutError({ code: 'VMPOOL_BOOT_TIMEOUT', message: 'boot took too long', timeoutName: 'BOOT_TIMEOUT_MS', timeoutMs: 60_000 })
    expect(error).toMatchObject({ code: 'VMPOOL_BOOT_TIMEOUT', timeoutName: 'BOOT_TIMEOUT_MS', timeoutMs: 60_000 })
    expect(error.details).toEqual({ timeoutName: 'BOOT_TIMEOUT_MS', timeoutMs: 60_000 })
    expect(isVmPoolError(error)).toBe(true)
  })

  test('invalidOptions is a VMPOOL_INVALID_OPTIONS error', () => {
    expect(invalidOptions('bad', { provider: 'fake' })).toMatchObject({ code: 'VMPOOL_INVALID_OPTIONS', message: '[vm-pool] [fake] bad' })
  })
})
