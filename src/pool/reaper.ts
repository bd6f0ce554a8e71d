import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { appendFile, mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { z } from 'zod'
import { VmPoolError } from '../errors.js'
import type { JsonValue, VmProvider } from '../providers/vm-provider.js'
import { writeFileAtomic } from '../util/fs-atomic.js'
import { overwriteFileSync } from '../util/in-place-file.js'
import { getCurrentProcessIdentity } from '../util/process-info.js'
import { scaleTimeout, sleep } from '../util/timeouts.js'
import { deleteAnnounced } from './announced-delete.js'
import type { LeaseStore } from './lease-store.js'
import { selectReapTargets } from './lease-table.js'
import { localProcessLiveness, type LeaseOwner, type OwnerLiveness } from './owner-liveness.js'
import { pruneReaperLogs } from './reaper-log-prune.js'
import { getReaperDir, readMarkerNames, type ReaperMarker } from './reaper-marker.js'

/** How often the watchdog looks at its owner: the "within a few seconds" of a crash clean-up. */
export const REAPER_POLL_INTERVAL_MS = 250
/** One VM delete by the watchdog (a QEMU VM is stopped gracefully, then killed). Scaled. */
export const REAPER_DELETE_TIMEOUT_MS = 120_000
/** The environment variable carrying the watchdog's config: not argv, which every user on the host can read. */
export const REAPER_CONFIG_ENV = 'VM_POOL_REAPER_CONFIG'
/**
 * Test seam: the watchdog entry script to spawn instead of the one beside this module. Tests run src/
 * through Vitest, where no compiled `reaper-main.js` sits beside `reaper.ts`; vitest.config.ts points this
 * at dist/ (built once by test/setup/build-dist.ts). The product never looks anywhere but beside itself.
 */
export const REAPER_ENTRY_ENV = 'VM_POOL_REAPER_ENTRY'

export const reaperConfigSchema = z
  .object({
    owner: z.object({ pid: z.number().int().positive(), host: z.string(), startTime: z.number().nullable() }),
    runId: z.string().min(1),
    providerName: z.string().min(1),
    providerOptions: z.record(z.string(), z.json()),
    stateDir: z.string().min(1),
    markerPath: z.string().min(1),
  })
  .strict()

/** Everything the detached watchdog needs to recreate the provider and find the owner's VMs. */
export type ReaperConfig = z.infer<typeof reaperConfigSchema>

/** The compiled watchdog entry, beside this module (or `VM_POOL_REAPER_ENTRY`, the test seam above). Read lazily. */
export function getReaperEntryPath(env: NodeJS.ProcessEnv = process.env): string {
  const path = env[REAPER_ENTRY_ENV] || fileURLToPath(new URL('./reaper-main.js', import.meta.url))
  if (!existsSync(path)) {
    throw new VmPoolError({
      code: 'VMPOOL_INTERNAL',
      operation: 'reaper',
      message: `the reaper entry script is missing (looked at ${path})`,
      hint: 'run `npm run build`, or pass `reaper: false` to createPool (then nothing cleans up after a crash but `vm-pool gc`)',
    })
  }
  return path
}

/** The pool's side: the marker file and the detached watchdog process. */
export class ReaperHandle {
  readonly pid: number
  readonly markerPath: string
  readonly #marker: ReaperMarker
  #stopped = false

  private constructor(pid: number, markerPath: string, marker: ReaperMarker) {
    this.pid = pid
    this.markerPath = markerPath
    this.#marker = marker
  }

  /**
   * Write the marker, then spawn the watchdog: `detached` puts it in its own session and process group, so a
   * Ctrl-C to the owner's group (or SIGKILL of the owner) does not reach it; `stdio: 'ignore'` + `unref()` keep
   * the owner free to exit.
   */
  static async start(options: { runId: string; providerName: string; providerOptions: Record<string, JsonValue>; stateDir: string; env?: Record<string, string> }): Promise<ReaperHandle> {
    const owner = getCurrentProcessIdentity()
    const markerPath = join(getReaperDir(options.stateDir), `${options.runId}-${owner.pid}.json`)
    const marker: ReaperMarker = { owner, runId: options.runId, provider: options.providerName, names: [] }
    await mkdir(getReaperDir(options.stateDir), { recursive: true, mode: 0o700 })
    await pruneReaperLogs(options.stateDir)
    await writeFileAtomic(markerPath, JSON.stringify(marker), 0o600)
    const config: ReaperConfig = { owner, runId: options.runId, providerName: options.providerName, providerOptions: options.providerOptions, stateDir: options.stateDir, markerPath }
    const env: NodeJS.ProcessEnv = { ...process.env, ...options.env, [REAPER_CONFIG_ENV]: JSON.stringify(config) }
    // Loader flags meant for the owner (Vitest, tsx) must not follow the plain-JS watchdog.
    delete env.NODE_OPTIONS
    const entry = getReaperEntryPath()
    const child = spawn(process.execPath, [entry], { detached: true, stdio: 'ignore', env })
    try {
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve)
        child.once('error', reject)
      })
    } catch (error) {
      await rm(markerPath, { force: true })
      throw new VmPoolError({ code: 'VMPOOL_INTERNAL', operation: 'reaper', message: `could not start the reaper watchdog: ${(error as Error).message}`, hint: 'pass `reaper: false` to createPool to run without one', cause: error })
    }
    child.unref()
    return new ReaperHandle(child.pid!, markerPath, marker)
  }

  /**
   * Record the VMs this owner holds now: written at once, synchronously (a small file; cheaper than four
   * thread-pool round trips, and the last list always lands last), in place (util/in-place-file.ts; no
   * rename to contend with the lease file's writes on the file system's journal). Readers skip a marker they
   * catch half-written; it is the second source of these names, beside the lease table. A failed write
   * rejects its own caller only.
   */
  setHeld(names: Iterable<string>): Promise<void> {
    if (this.#stopped) return Promise.resolve()
    this.#marker.names = [...names].sort()
    try {
      overwriteFileSync(this.markerPath, JSON.stringify(this.#marker), 0o600)
      return Promise.resolve()
    } catch (error) {
      return Promise.reject(error as Error)
    }
  }

  /** The owner drained: remove the marker; the watchdog sees it gone and exits. */
  async stop(): Promise<void> {
    this.#stopped = true
    await rm(this.markerPath, { force: true })
  }
}

export interface ReapResult {
  deleted: string[]
  failed: { name: string; message: string }[]
}

/**
 * Delete what a dead owner held for `runId`: its leased, booting, deleting and fresh VMs — from the lease
 * table and from the marker's names (lease-table.ts `selectReapTargets`). Idle (warm) VMs belong to nobody
 * and stay. The deletes go through `deleteAnnounced`, like every delete of the pool and gc.
 */
export async function reapOwner(options: { provider: VmProvider; store: LeaseStore; owner: LeaseOwner; runId: string; names?: readonly string[]; log?: (line: string) => void }): Promise<ReapResult> {
  const actor = { owner: getCurrentProcessIdentity(), runId: options.runId }
  const { deleted, failed } = await deleteAnnounced(
    {
      update: (mutate) => options.store.update((table, context) => mutate(table, context.now)),
      provider: options.provider,
      actor,
      timeout: { name: 'REAPER_DELETE_TIMEOUT_MS', ms: scaleTimeout(REAPER_DELETE_TIMEOUT_MS) },
    },
    (table, now) => ({ names: selectReapTargets(table, { owner: options.owner, runId: options.runId, names: options.names }, actor, now), result: undefined }),
  )
  for (const name of deleted) options.log?.(`deleted ${name}`)
  const result: ReapResult = { deleted, failed: failed.map(({ name, error }) => ({ name, message: (error as Error).message })) }
  for (const failure of result.failed) options.log?.(`could not delete ${failure.name}: ${failure.message}`)
  return result
}

/**
 * The watchdog loop: poll the owner; when the marker is gone (the owner drained) exit; when the owner is gone
 * (SIGKILL, Ctrl-C, exit without drain) reap its VMs and exit. The marker is checked first: the owner removes it
 * last, once it holds nothing, so an owner that drained and then exited leaves nothing to reap. (Reaping it
 * anyway opened its lease file, and so made the state dir again when a test or a user had removed it meanwhile.)
 */
export async function runReaper(
  config: ReaperConfig,
  deps: { provider: () => Promise<VmProvider>; store: (provider: VmProvider) => LeaseStore; log: (line: string) => void; liveness?: OwnerLiveness },
): Promise<'drained' | 'reaped'> {
  const liveness = deps.liveness ?? localProcessLiveness
  for (;;) {
    if (!existsSync(config.markerPath)) return 'drained'
    if (!liveness.isAlive(config.owner, Date.now())) {
      const names = await readMarkerNames(config.markerPath)
      const provider = await deps.provider()
      deps.log(`owner pid ${config.owner.pid} (run ${config.runId}) is gone; reaping ${names.length} marked VM(s) and its leases`)
      const result = await reapOwner({ provider, store: deps.store(provider), owner: config.owner, runId: config.runId, names, log: deps.log })
      await provider.close?.()
      // A failed delete keeps the marker: `vm-pool gc` (and the next pool on this host) finishes the job.
      if (result.failed.length === 0) await rm(config.markerPath, { force: true })
      return 'reaped'
    }
    await sleep(REAPER_POLL_INTERVAL_MS)
  }
}

/** One line appended to `<stateDir>/reapers/<runId>-<pid>.log`: the watchdog has no stdio. */
export function makeReaperLog(config: ReaperConfig): (line: string) => void {
  const path = config.markerPath.replace(/\.json$/, '.log')
  return (line) => {
    void appendFile(path, `${new Date().toISOString()} ${line}\n`, { mode: 0o600 }).catch(() => {})
  }
}
