import { BOOT_TIMEOUT_MS } from '../providers/qemu/cold-boot-strategy.js'
import { getTimeoutScale } from '../util/timeouts.js'

/**
 * Vitest's own defaults (testTimeout 5 s, hookTimeout 10 s) are shorter than one VM boot: a test
 * whose `freshVm()` boots (snapshots off, a disk image, Multipass) would fail with Vitest's generic
 * timeout. A boot may take BOOT_TIMEOUT_MS; the test gets a minute on top for its own work.
 */
export const VM_TEST_TIMEOUT_MS = BOOT_TIMEOUT_MS + 60_000
/** `beforeAll`/`afterAll` that create or delete VMs get the same room. */
export const VM_HOOK_TIMEOUT_MS = BOOT_TIMEOUT_MS + 60_000

export interface UserTimeouts {
  testTimeout?: number | undefined
  hookTimeout?: number | undefined
}

/**
 * The `test` config the plugin adds: only the timeouts the user did not set (their values always
 * win), scaled by `timeoutScale` or else `VM_POOL_TIMEOUT_SCALE`.
 */
export function getVmAwareTimeouts(user: UserTimeouts, timeoutScale: number | undefined, env: NodeJS.ProcessEnv = process.env): UserTimeouts {
  const scale = timeoutScale ?? getTimeoutScale(env)
  const out: UserTimeouts = {}
  if (user.testTimeout === undefined) out.testTimeout = Math.round(VM_TEST_TIMEOUT_MS * scale)
  if (user.hookTimeout === undefined) out.hookTimeout = Math.round(VM_HOOK_TIMEOUT_MS * scale)
  return out
}
