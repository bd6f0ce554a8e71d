import { invalidOptions } from '../errors.js'
import type { VmProvider } from '../providers/vm-provider.js'
import { redactConnectionString } from '../util/redact.js'
import { FileLeaseStore } from './file-lease-store.js'
import type { LeaseStore } from './lease-store.js'
import { PostgresLeaseStore, parsesAsConnectionString } from './postgres-lease-store.js'

/** Selects the lease store for `createPool`, the CLI and the watchdog when no `leaseStore` option says: `file` or a `postgres://` URL. */
export const LEASE_STORE_ENV = 'VM_POOL_LEASE_STORE'

/** What `createPool({ leaseStore })` accepts: a store, `'file'`, or a `postgres://` / `postgresql://` connection string. */
export type LeaseStoreOption = LeaseStore | string

export function isLeaseStore(value: unknown): value is LeaseStore {
  return typeof value === 'object' && value !== null && typeof (value as LeaseStore).read === 'function' && typeof (value as LeaseStore).update === 'function'
}

/**
 * The store a pool (or `vm-pool ls/gc`, or the watchdog) uses for `provider`: the option, else
 * `VM_POOL_LEASE_STORE`, else the file store. A connection string gets the provider's name as namespace, so
 * each provider has its own table, as with the file store. `owned`: we opened it, so we close it.
 */
export function openLeaseStore(option: LeaseStoreOption | undefined, context: { provider: Pick<VmProvider, 'name' | 'list'>; stateDir?: string; warn?: (message: string) => void; env?: NodeJS.ProcessEnv }): { store: LeaseStore; owned: boolean; connectionString?: string } {
  if (option !== undefined && typeof option !== 'string') {
    if (!isLeaseStore(option)) throw invalidOptions('leaseStore must be a LeaseStore (read, update), \'file\' or a postgres:// connection string')
    return { store: option, owned: false }
  }
  const chosen = option ?? (context.env ?? process.env)[LEASE_STORE_ENV] ?? 'file'
  if (chosen === '' || chosen === 'file') {
    return { store: new FileLeaseStore({ provider: context.provider, ...(context.stateDir ? { stateDir: context.stateDir } : {}), ...(context.warn ? { warn: context.warn } : {}) }), owned: true }
  }
  if (/^postgres(ql)?:\/\//.test(chosen)) {
    // pg parses the string only when it first connects, and its "Invalid URL" was retried as an outage for
    // POSTGRES_RECONNECT_TIMEOUT_MS: refuse it here, at once, naming where it came from (password redacted).
    if (!parsesAsConnectionString(chosen)) throw invalidOptions(`${option === undefined ? LEASE_STORE_ENV : 'leaseStore'} is not a valid connection string: ${JSON.stringify(redactConnectionString(chosen))}`, { hint: 'expected postgres://user:password@host[:port]/database (percent-encode special characters in the password)' })
    return { store: new PostgresLeaseStore({ connectionString: chosen, namespace: context.provider.name, ...(context.warn ? { warn: context.warn } : {}) }), owned: true, connectionString: chosen }
  }
  throw invalidOptions(`unknown lease store ${JSON.stringify(redactConnectionString(chosen))}${option === undefined ? ` (from ${LEASE_STORE_ENV})` : ''}: expected 'file' or a postgres:// connection string`)
}
