/**
 * Type tests, checked by `tsc -p test/types/tsconfig.json` (test/unit/types.test.ts runs it) and by
 * `npm run typecheck`: each `@ts-expect-error` line must be an error, or tsc fails ("unused directive").
 */
import { expectTypeOf } from 'vitest'
import { createPool, fakeProvider, type ProviderName } from '../../src/index.js'
import { vmPool, type VmPoolOptions } from '../../src/vitest/index.js'

// Typed provider names.
vmPool({ provider: 'qemu', providerOptions: { memoryMiB: 512 } })
vmPool({ provider: 'fake', providerOptions: { stateDir: '/tmp/x', bootDelayMs: 10 } })
vmPool({ providerOptions: { cpus: 2 } }) // qemu, the default
// @ts-expect-error: not a provider name
vmPool({ provider: 'qemo' })
// @ts-expect-error: qemu's option is memoryMiB
vmPool({ provider: 'qemu', providerOptions: { memoryMB: 512 } })
// @ts-expect-error: a fake provider option given to qemu
vmPool({ provider: 'qemu', providerOptions: { bootDelayMs: 10 } })
// @ts-expect-error: a plain string is not a ProviderName
vmPool({ provider: String('fake') })
expectTypeOf<VmPoolOptions['provider']>().toEqualTypeOf<ProviderName | undefined>()

// createPool's keepWarm takes `true` like vmPool's, and a reset opt-out.
createPool({ provider: fakeProvider(), keepWarm: true })
createPool({ provider: fakeProvider(), keepWarm: { reset: false } })
// @ts-expect-error: keepWarm is true or an object
createPool({ provider: fakeProvider(), keepWarm: 'yes' })
