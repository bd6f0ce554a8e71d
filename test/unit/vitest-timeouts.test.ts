import { describe, expect, test } from 'vitest'
import { BOOT_TIMEOUT_MS } from '../../src/providers/qemu/cold-boot-strategy.js'
import { getVmAwareTimeouts, VM_HOOK_TIMEOUT_MS, VM_TEST_TIMEOUT_MS } from '../../src/vitest/vm-aware-timeouts.js'
import { vmPool } from '../../src/vitest/vm-pool-plugin.js'

describe('VM-aware Vitest timeouts', () => {
  test('longer than a boot, set only where the user set none', () => {
    expect(VM_TEST_TIMEOUT_MS).toBeGreaterThan(BOOT_TIMEOUT_MS)
    expect(VM_HOOK_TIMEOUT_MS).toBeGreaterThan(BOOT_TIMEOUT_MS)
    expect(getVmAwareTimeouts({}, undefined, {})).toEqual({ testTimeout: VM_TEST_TIMEOUT_MS, hookTimeout: VM_HOOK_TIMEOUT_MS })
    expect(getVmAwareTimeouts({ testTimeout: 1234 }, undefined, {})).toEqual({ hookTimeout: VM_HOOK_TIMEOUT_MS })
    expect(getVmAwareTimeouts({ testTimeout: 1234, hookTimeout: 99 }, 3, {})).toEqual({})
  })

  test('scaled by timeoutScale, else VM_POOL_TIMEOUT_SCALE', () => {
    expect(getVmAwareTimeouts({}, 2, { VM_POOL_TIMEOUT_SCALE: '5' }).testTimeout).toBe(VM_TEST_TIMEOUT_MS * 2)
    expect(getVmAwareTimeouts({}, undefined, { VM_POOL_TIMEOUT_SCALE: '3' })).toEqual({ testTimeout: VM_TEST_TIMEOUT_MS * 3, hookTimeout: VM_HOOK_TIMEOUT_MS * 3 })
  })

  test("the plugin's config hook adds them, and never over the user's", async () => {
    const hook = async (test: Record<string, unknown>) => {
      const plugin = vmPool({ provider: 'fake', timeoutScale: 2 })
      const config = plugin.config as unknown as (config: { test: Record<string, unknown> }) => Promise<{ test: Record<string, unknown> }>
      const previous = process.env.VM_POOL_TIMEOUT_SCALE
      try {
        return (await config({ test })).test
      } finally {
        if (previous === undefined) delete process.env.VM_POOL_TIMEOUT_SCALE
        else process.env.VM_POOL_TIMEOUT_SCALE = previous
      }
    }
    expect(await hook({})).toMatchObject({ testTimeout: VM_TEST_TIMEOUT_MS * 2, hookTimeout: VM_HOOK_TIMEOUT_MS * 2 })
    const own = await hook({ testTimeout: 7_000, hookTimeout: 8_000 })
    expect(own.testTimeout).toBeUndefined()
    expect(own.hookTimeout).toBeUndefined()
  })
})
