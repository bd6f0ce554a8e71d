/**
 * The detached watchdog process started by `ReaperHandle.start` (see reaper.ts). Its config comes in
 * `VM_POOL_REAPER_CONFIG`; it has no stdio, so it logs to `<stateDir>/reapers/<runId>-<pid>.log`.
 */
import { createProvider } from '../providers/provider-registry.js'
import { openLeaseStore } from './lease-store-selection.js'
import { REAPER_CONFIG_ENV, makeReaperLog, reaperConfigSchema, runReaper } from './reaper.js'

function readConfig(): unknown {
  try {
    return JSON.parse(process.env[REAPER_CONFIG_ENV] ?? 'null')
  } catch {
    return null
  }
}

const parsed = reaperConfigSchema.safeParse(readConfig())
if (!parsed.success) {
  // Nobody can read our stderr: there is nothing to watch without a config.
  process.exitCode = 2
} else {
  const config = parsed.data
  const log = makeReaperLog(config)
  // Own session, no terminal: SIGHUP would only come from someone closing a terminal we never had.
  process.on('SIGHUP', () => {})
  try {
    await runReaper(config, {
      provider: () => createProvider(config.providerName, config.providerOptions),
      // VM_POOL_LEASE_STORE in our environment (set by the pool) names the owner's store; else its lease file.
      store: (provider) => openLeaseStore(undefined, { provider, stateDir: config.stateDir, warn: (message) => log(`warning: ${message}`) }).store,
      log,
    })
  } catch (error) {
    log(`reaper failed: ${error instanceof Error ? error.message : String(error)}`)
    process.exitCode = 1
  }
}
