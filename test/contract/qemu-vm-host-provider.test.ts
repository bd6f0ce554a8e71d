/**
 * The provider contract against `qemuProvider({ host })`: QEMU started over SSH on a VM host (a real
 * sshd on loopback in front of this machine, test/helpers/vm-host.ts), each guest reached through that
 * SSH connection. The same suite the local QEMU provider passes (qemu-provider.test.ts).
 */
import { afterAll } from 'vitest'
import { QEMU_TEST_CREATE_TIMEOUT_MS } from '../helpers/qemu.js'
import { getVmHostSkipReason, startTestVmHost, useVmHostProvider, type TestVmHost } from '../helpers/vm-host.js'
import { describeProviderContract } from './provider-contract.js'

const skipReason = getVmHostSkipReason()
let vmHost: TestVmHost | undefined
let cleanup: (() => Promise<void>) | undefined

describeProviderContract(
  'qemu on a VM host',
  async () => {
    vmHost = await startTestVmHost()
    const used = useVmHostProvider(vmHost)
    cleanup = used.cleanup
    return used.provider
  },
  { createTimeoutMs: QEMU_TEST_CREATE_TIMEOUT_MS, skipReason },
)

afterAll(async () => {
  await cleanup?.()
  await vmHost?.stop()
}, 60_000)
