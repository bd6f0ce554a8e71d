import { createRequire } from 'node:module'
import { VmPoolError } from '../../errors.js'

export type SqliteModule = typeof import('node:sqlite')

/**
 * `node:sqlite`, loaded without its one-time "SQLite is an experimental feature" warning (Node 22.13 to
 * 23 print it; Node 24 does not). Node emits it through `process.emitWarning` while the module loads,
 * synchronously, so `process.emitWarning` is wrapped for exactly that `require` call and lets every
 * other warning through — `--no-warnings` would hide the user's own warnings too.
 */
export function loadSqlite(): SqliteModule {
  const require = createRequire(import.meta.url)
  const original = process.emitWarning
  process.emitWarning = function emitWarning(this: unknown, warning: string | Error, ...rest: unknown[]) {
    const options = rest[0]
    const type = typeof options === 'string' ? options : typeof options === 'object' && options !== null ? (options as { type?: string }).type : undefined
    const isSqliteNotice = (type ?? (warning instanceof Error ? warning.name : undefined)) === 'ExperimentalWarning' && /sqlite/i.test(String(warning instanceof Error ? warning.message : warning))
    if (isSqliteNotice) return
    return (original as (...args: unknown[]) => void).call(process, warning, ...rest)
  } as typeof process.emitWarning
  try {
    return require('node:sqlite') as SqliteModule
  } catch (error) {
    throw new VmPoolError({
      code: 'VMPOOL_INVALID_OPTIONS',
      operation: 'history',
      message: `the command history needs node:sqlite, which this Node (${process.version}) does not have without a flag`,
      hint: 'use Node >= 22.13, or set VM_POOL_HISTORY_DB=off to run without a history',
      cause: error,
    })
  } finally {
    process.emitWarning = original
  }
}
