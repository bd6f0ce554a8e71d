/** The LeaseStore contract, run against PostgresLeaseStore on a real PostgreSQL cluster (test/helpers/postgres.ts). */
import { afterAll, beforeAll, describe } from 'vitest'
import { PostgresLeaseStore } from '../../src/pool/postgres-lease-store.js'
import { getPostgresSkipReason, startPostgres, type StartedPostgres } from '../helpers/postgres.js'
import { describeLeaseStoreContract } from './lease-store-contract.js'

const skipReason = getPostgresSkipReason()

describe.skipIf(skipReason !== undefined)(`PostgresLeaseStore${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let server: StartedPostgres
  let databases = 0
  beforeAll(async () => {
    server = await startPostgres()
  }, 120_000)
  afterAll(() => server?.stop())

  describeLeaseStoreContract('PostgresLeaseStore', async () => {
    // A database per test: each starts from an empty store, and creates the schema itself.
    const connectionString = await server.createDatabase(`contract_${++databases}`)
    const opened: PostgresLeaseStore[] = []
    const open = () => {
      const store = new PostgresLeaseStore({ connectionString, namespace: 'fake' })
      opened.push(store)
      return store
    }
    return {
      store: open(),
      another: open,
      childStore: { kind: 'postgres', connectionString, namespace: 'fake' },
      dispose: async () => {
        await Promise.all(opened.map((store) => store.close()))
      },
    }
  })
})
