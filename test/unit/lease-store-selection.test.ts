import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { openLeaseStore } from '../../src/pool/lease-store-selection.js'

const stateDir = mkdtempSync(join(tmpdir(), 'vm-pool-store-selection-'))
afterAll(() => rmSync(stateDir, { recursive: true, force: true }))
const provider = fakeProvider({ stateDir })

test.each([
  'postgres://u:s3cretPW@host:notaport/db',
  'postgres://u:s3cretPW@',
  'postgresql://u:s3cretPW@[::1/db',
])('a malformed VM_POOL_LEASE_STORE (%s) is refused at once, named, with its password redacted', (url) => {
  // Before, pg parsed it only on first connect and its "Invalid URL" was retried for 30 s as an outage.
  let error: unknown
  try {
    openLeaseStore(undefined, { provider, env: { VM_POOL_LEASE_STORE: url } })
  } catch (caught) {
    error = caught
  }
  expect(isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS')).toBe(true)
  const text = JSON.stringify((error as { toJSON(): unknown }).toJSON())
  expect(text).toContain('VM_POOL_LEASE_STORE is not a valid connection string')
  expect(text).not.toContain('s3cretPW')
})

test('well-formed connection strings pg accepts still open a store (nothing connects until it is used)', async () => {
  for (const url of ['postgres://u:s3cret@127.0.0.1:5432/db', 'postgresql://u@/db?host=/var/run/postgresql', 'postgres://u:with space@localhost/db']) {
    const { store, owned, connectionString } = openLeaseStore(url, { provider })
    expect(owned).toBe(true)
    expect(connectionString).toBe(url)
    await (store as { close?: () => Promise<void> }).close?.()
  }
})
