import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll } from 'vitest'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { countingProvider } from '../../src/providers/counting-provider.js'
import { describeProviderContract } from './provider-contract.js'

const stateDir = mkdtempSync(join(tmpdir(), 'vm-pool-fake-contract-'))
afterAll(() => rmSync(stateDir, { recursive: true, force: true }))
describeProviderContract('fake', () => fakeProvider({ stateDir }))
describeProviderContract('counting(fake)', () => countingProvider(fakeProvider({ stateDir, bootDelayMs: 20 })))
