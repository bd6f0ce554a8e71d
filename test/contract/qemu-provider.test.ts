/**
 * The provider contract against real QEMU VMs (TCG here; KVM where it works). Two boots: one VM for
 * the exec checks, one for the lifecycle test.
 */
import { afterAll } from 'vitest'
import { getQemuSkipReason, QEMU_TEST_CREATE_TIMEOUT_MS, useQemuTestProvider, type QemuTestProvider } from '../helpers/qemu.js'
import { describeProviderContract } from './provider-contract.js'

const skipReason = getQemuSkipReason()
let qemu: QemuTestProvider | undefined

describeProviderContract(
  'qemu',
  () => {
    qemu = useQemuTestProvider()
    return qemu.provider
  },
  { createTimeoutMs: QEMU_TEST_CREATE_TIMEOUT_MS, skipReason },
)

afterAll(async () => {
  await qemu?.cleanup()
}, 60_000)
