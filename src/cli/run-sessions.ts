import { VmPoolError } from '../errors.js'
import { createProvider } from '../providers/provider-registry.js'
import type { JsonValue, VmProvider } from '../providers/vm-provider.js'
import { createPool, type VmPool } from '../pool/vm-pool.js'
import { poolVmAllocator } from '../workflow/vm-allocator.js'
import { DEFAULT_MAX_CONCURRENT_SESSIONS, SessionManager, WORKFLOW_VM_PREFIX } from '../workflow/session-manager.js'
import { UsageError } from './cli-command.js'

/**
 * Sessions for the commands that run workflows (`run`, `serve`): VMs come from the cross-process pool
 * so the reaper deletes them if this process is killed (SIGKILL skips our cleanup) and a concurrent
 * `vm-pool gc` sees them as held, not orphaned.
 */
export interface RunSessions {
  provider: VmProvider
  pool: VmPool
  sessions: SessionManager
  /** Drain the pool (stops the reaper) and close the provider. */
  close(): Promise<void>
}

export async function openRunSessions(providerName: string, providerOptions: Record<string, unknown>, maxConcurrent: number): Promise<RunSessions> {
  const provider = await createProvider(providerName, providerOptions)
  try {
    await assertUsable(provider)
    const pool = createPool({ provider, prefix: WORKFLOW_VM_PREFIX, reaper: { providerName, providerOptions: providerOptions as Record<string, JsonValue> } })
    const sessions = new SessionManager({
      provider,
      prefix: WORKFLOW_VM_PREFIX,
      runId: pool.runId,
      allocator: poolVmAllocator(pool),
      maxConcurrentSessions: maxConcurrent,
      onLimit: 'queue',
      // Our own work waits for each other; how long is up to it, not to a queue timer.
      queueTimeoutMs: Number.POSITIVE_INFINITY,
    })
    return {
      provider,
      pool,
      sessions,
      async close() {
        try {
          // Every session released its VM already (deleted, or kept with --keep-vm); drain stops the reaper.
          await pool.drain()
        } finally {
          await provider.close?.()
        }
      },
    }
  } catch (error) {
    await provider.close?.()
    throw error
  }
}

export async function assertUsable(provider: VmProvider): Promise<void> {
  if (!provider.probe) return
  const probe = await provider.probe()
  if (probe.usable) return
  throw new VmPoolError({
    code: 'VMPOOL_PROVIDER_UNAVAILABLE',
    provider: provider.name,
    operation: 'run',
    message: `the ${provider.name} provider is not usable here: ${probe.reason}`,
    hint: probe.hint ?? 'run vm-pool doctor, or choose another provider with --provider',
  })
}

export function parseMaxConcurrent(raw: string | undefined): number {
  if (raw === undefined) return DEFAULT_MAX_CONCURRENT_SESSIONS
  const value = Number(raw)
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value) || value < 1) {
    throw new UsageError(`--max-concurrent must be a whole number of at least 1, got ${JSON.stringify(raw)}`)
  }
  return value
}
