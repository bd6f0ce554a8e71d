/** The LeaseStore contract, run against FileLeaseStore with each of its locks (src/util/exclusive-lock.ts). */
import { FileLeaseStore } from '../../src/pool/file-lease-store.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { makeStateDir } from '../../fixtures/pool/harness.js'
import { describeLeaseStoreContract } from './lease-store-contract.js'

for (const lock of ['abstract-socket', 'symlink'] as const) {
  describeLeaseStoreContract(`FileLeaseStore (${lock} lock)`, () => {
    const state = makeStateDir()
    const open = () => new FileLeaseStore({ provider: fakeProvider({ stateDir: state.dir }), stateDir: state.dir, lock })
    return { store: open(), another: open, childStore: { kind: 'file', stateDir: state.dir, lock }, dispose: state.dispose }
  })
}
