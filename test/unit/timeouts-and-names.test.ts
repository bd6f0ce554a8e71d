import { describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { getStateDir } from '../../src/util/state-dir.js'
import { getTimeoutScale, MAX_TIMER_MS, scaleTimeout, scaleTimeoutBy, settleWithin, withTimeout } from '../../src/util/timeouts.js'
import { validateVmName } from '../../src/util/vm-name.js'

describe('timeouts', () => {
  test('VM_POOL_TIMEOUT_SCALE multiplies timeouts and rejects nonsense', () => {
    expect(scaleTimeout(1000, {})).toBe(1000)
    expect(scaleTimeout(1000, { VM_POOL_TIMEOUT_SCALE: '2.5' })).toBe(2500)
    expect(() => getTimeoutScale({ VM_POOL_TIMEOUT_SCALE: 'fast' })).toThrow(/VM_POOL_TIMEOUT_SCALE.*"fast"/)
    expect(() => getTimeoutScale({ VM_POOL_TIMEOUT_SCALE: '0' })).toThrow()
  })

  test('a scaled timeout is clamped to what a Node timer holds (2^31-1 ms), never past it', async () => {
    expect(MAX_TIMER_MS).toBe(2 ** 31 - 1)
    expect(scaleTimeout(3_600_000, { VM_POOL_TIMEOUT_SCALE: '1000' })).toBe(MAX_TIMER_MS)
    expect(scaleTimeoutBy(604_800_000, 4)).toBe(MAX_TIMER_MS)
    expect(scaleTimeoutBy(604_800_000, 3)).toBe(1_814_400_000)
    // withTimeout clamps too: a 30-day wait does not fire at once.
    const slow = new Promise((resolve) => setTimeout(() => resolve('done'), 100))
    await expect(withTimeout(slow, { name: 'HUGE_MS', ms: 30 * 86_400_000, what: 'x' })).resolves.toBe('done')
  })

  test('withTimeout rejects with a named timeout error and passes results through', async () => {
    await expect(withTimeout(Promise.resolve(7), { name: 'X_MS', ms: 50, what: 'x' })).resolves.toBe(7)
    const error = (await withTimeout(new Promise(() => {}), { name: 'SSH_READY_TIMEOUT_MS', ms: 30, what: 'ssh to answer', provider: 'qemu', code: 'VMPOOL_BOOT_TIMEOUT' }).catch((e: unknown) => e)) as Error
    expect(isVmPoolError(error, 'VMPOOL_BOOT_TIMEOUT')).toBe(true)
    expect(error.message).toContain('[vm-pool] [qemu] timed out after 30 ms waiting for ssh to answer (SSH_READY_TIMEOUT_MS)')
    expect(error.message).toContain('VM_POOL_TIMEOUT_SCALE')
  })

  test('settleWithin gives the value, undefined when late, and passes a rejection through', async () => {
    await expect(settleWithin(Promise.resolve(7), 1000)).resolves.toBe(7)
    await expect(settleWithin(new Promise(() => {}), 30)).resolves.toBeUndefined()
    await expect(settleWithin(new Promise((resolve) => setTimeout(resolve, 500, 'late')), 30)).resolves.toBeUndefined()
    await expect(settleWithin(Promise.reject(new Error('refused')), 1000)).rejects.toThrow('refused')
  })
})

describe('names and paths', () => {
  test.each(['vitest-worker-abc-1', 'a', '0-x', 'pytest-worker-123-1700000000', 'x'.repeat(63)])('accepts %s', (name) => {
    expect(validateVmName(name)).toBe(name)
  })
  test.each(['', 'Upper', '-lead', 'a_b', 'a b', 'a;rm', '../x', 'x'.repeat(64), 42])('refuses %j', (name) => {
    expect(() => validateVmName(name)).toThrow(/invalid VM name/)
  })

  test('state dir: option, then VM_POOL_STATE_DIR, then XDG cache, then ~/.cache', () => {
    expect(getStateDir('/opt/x', { VM_POOL_STATE_DIR: '/y' })).toBe('/opt/x')
    expect(getStateDir(undefined, { VM_POOL_STATE_DIR: '/y' })).toBe('/y')
    expect(getStateDir(undefined, { XDG_CACHE_HOME: '/c' })).toBe('/c/vm-pool')
    expect(getStateDir(undefined, {})).toMatch(/\.cache\/vm-pool$/)
  })
})
