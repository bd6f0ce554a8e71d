import { afterEach, describe, expect, test } from 'vitest'
import { isDebugEnabled } from '../../src/util/debug.js'

describe('isDebugEnabled', () => {
  const saved = process.env.DEBUG
  afterEach(() => {
    if (saved === undefined) delete process.env.DEBUG
    else process.env.DEBUG = saved
  })

  test('follows DEBUG as it changes (its parse is kept only while the variable stays the same)', () => {
    delete process.env.DEBUG
    expect(isDebugEnabled('vm-pool:qemu')).toBe(false)
    process.env.DEBUG = 'other, vm-pool:qemu'
    expect(isDebugEnabled('vm-pool:qemu')).toBe(true)
    expect(isDebugEnabled('vm-pool:pool')).toBe(false)
    process.env.DEBUG = 'vm-pool*'
    expect(isDebugEnabled('vm-pool:pool')).toBe(true)
    expect(isDebugEnabled()).toBe(true)
    expect(isDebugEnabled('other')).toBe(false)
    process.env.DEBUG = '*'
    expect(isDebugEnabled('other')).toBe(true)
    process.env.DEBUG = ''
    expect(isDebugEnabled('vm-pool:pool')).toBe(false)
  })
})
