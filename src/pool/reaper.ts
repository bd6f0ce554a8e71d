import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { appendFile, mkdir, readdir, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { z } from 'zod'
import { VmPoolError } from '../errors.js'
import type { JsonValue, VmProvider } from '../providers/vm-provider.js'
import { writeFileAtomic } from '../util/fs-atomic.js'
import { getCurrentProcessIdentity, isProcessAlive, type ProcessIdentity } from '../util/process-info.js'
import { scaleTimeout, sleep, withTimeout } from '../util/timeouts.js'
import { isSameOwner, type LeaseStore } from './lease-store.js'

/** How often the watchdog looks at its owner: the "within a few seconds" of a crash clean-up. */
export const REAPER_POLL_INTERVAL_MS = 250
/** One VM delete by the watchdog (a QEMU VM is stopped gracefully, then killed). Scaled. */
export const REAPER_DELETE_TIMEOUT_MS = 120_000
/** The environment variable carrying the watchdog's config: not argv, which every user on the host can read. */
export const REAPER_CONFIG_ENV = 'VM_POOL_REAPER_CONFIG'

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

/**
 * The marker file says "this owner still wants its watchdog" and lists the VMs it holds right now.
 * The watchdog exits when the file is gone (the pool drained). The names are a second source beside the
 * lease table, so a crash is cleaned up even if the lease file was rebuilt and lost its owners.
 */
export interface ReaperMarker {
  owner: ProcessIdentity
  runId: string
  provider: string
  names: string[]
}

export function getReaperDir(stateDir: string): string {
  return join(stateDir, 'reapers')
}

/** The compiled watchdog entry: beside this module in dist/, or dist/ from the sources (tests run src/ through Vitest). */
export function getReaperEntryPath(): string {
  const candidates = [new URL('./reaper-main.js', import.meta.url), new URL('../../dist/pool/reaper-main.js', import.meta.url)].map((url) => fileURLToPath(url))
  const found = candidates.find((path) => existsSync(path))
  if (!found) {
    throw new VmPoolError({
      code: 'VMPOOL_INTERNAL',
      operation: 'reaper',
      message: `the reaper entry script is missing (looked at ${candidates.join(', ')})`,
      hint: 'run `npm run build`, or pass `reaper: false` to createPool (then nothing cleans up after a crash but `vm-pool gc`)',
    })
  }
  return found
}

/** The pool's side: the marker file and the detached watchdog process. */
export class ReaperHandle {
  readonly pid: number
  readonly markerPath: string
  readonly #marker: ReaperMarker
  #writes: Promise<void> = Promise.resolve()
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
   * Record the VMs this owner holds now. Writes are serialized so an older list never lands last; a failed
   * write rejects its own caller only, so the next one still lands (the chain is not left rejected).
   */
  setHeld(names: Iterable<string>): Promise<void> {
    const snapshot = [...names].sort()
    this.#writes = this.#writes.catch(() => {}).then(async () => {
      if (this.#stopped) return
      this.#marker.names = snapshot
      await writeFileAtomic(this.markerPath, JSON.stringify(this.#marker), 0o600)
    })
    return this.#writes
  }

  /** The owner drained: remove the marker; the watchdog sees it gone and exits. */
  async stop(): Promise<void> {
    await this.#writes.catch(() => {})
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
 * table and from the marker's names. Idle (warm) VMs belong to nobody and stay. Entries are first marked
 * `deleting` by the reaper under the lock, so a pool that adopts or a gc that sweeps at the same moment
 * never touches them; the deletes themselves run outside the lock.
 */
export async function reapOwner(options: { provider: VmProvider; store: LeaseStore; owner: ProcessIdentity; runId: string; names?: readonly string[]; log?: (line: string) => void }): Promise<ReapResult> {
  const me = getCurrentProcessIdentity()
  const now = new Date().toISOString()
  const targets = await options.store.update((table) => {
    const names = new Set(options.names ?? [])
    for (const entry of Object.values(table)) {
      if (entry.state !== 'idle' && isSameOwner(entry.owner, options.owner) && entry.runId === options.runId) names.add(entry.name)
    }
    const chosen: string[] = []
    for (const name of names) {
      const entry = table[name]
      if (entry) {
        const ours = isSameOwner(entry.owner, options.owner) || (entry.owner === null && entry.recoveredAt !== undefined)
        // Released warm, or already taken over by someone else since the marker was written: not ours to delete.
        if (entry.state === 'idle' || !ours) continue
        entry.state = 'deleting'
        entry.owner = me
        entry.updatedAt = now
      }
      chosen.push(name)
    }
    return chosen
  })
  const result: ReapResult = { deleted: [], failed: [] }
  for (const name of targets) {
    try {
      const timeoutMs = scaleTimeout(REAPER_DELETE_TIMEOUT_MS)
      await withTimeout(options.provider.delete(name), { name: 'REAPER_DELETE_TIMEOUT_MS', ms: timeoutMs, what: `${options.provider.name} to delete ${name}`, provider: options.provider.name, vm: name })
      result.deleted.push(name)
      options.log?.(`deleted ${name}`)
    } catch (error) {
      result.failed.push({ name, message: (error as Error).message })
      options.log?.(`could not delete ${name}: ${(error as Error).message}`)
    }
  }
  const deleted = new Set(result.deleted)
  await options.store.update((table) => {
    for (const name of deleted) {
      if (table[name]?.state === 'deleting' && isSameOwner(table[name].owner, me)) delete table[name]
    }
  })
  return result
}

/**
 * The watchdog loop: poll the owner; when it is gone (SIGKILL, Ctrl-C, exit without drain) reap its VMs
 * and exit; when the marker is gone (the owner drained) exit. Liveness is checked before the marker, so an
 * owner that dies right after removing its marker is still reaped (and there is then nothing left to reap).
 */
export async function runReaper(config: ReaperConfig, deps: { provider: () => Promise<VmProvider>; store: (provider: VmProvider) => LeaseStore; log: (line: string) => void }): Promise<'drained' | 'reaped'> {
  for (;;) {
    if (!isProcessAlive(config.owner)) {
      const names = await readMarkerNames(config.markerPath)
      const provider = await deps.provider()
      deps.log(`owner pid ${config.owner.pid} (run ${config.runId}) is gone; reaping ${names.length} marked VM(s) and its leases`)
      const result = await reapOwner({ provider, store: deps.store(provider), owner: config.owner, runId: config.runId, names, log: deps.log })
      await provider.close?.()
      // A failed delete keeps the marker: `vm-pool gc` (and the next pool on this host) finishes the job.
      if (result.failed.length === 0) await rm(config.markerPath, { force: true })
      return 'reaped'
    }
    if (!existsSync(config.markerPath)) return 'drained'
    await sleep(REAPER_POLL_INTERVAL_MS)
  }
}

/**
 * Markers whose owner is dead and that are still on disk: their watchdog died too (killed with its
 * session, a reboot) or could not delete everything. `vm-pool gc` finishes their job.
 */
export async function findOrphanedMarkers(stateDir: string, providerName: string): Promise<(ReaperMarker & { path: string })[]> {
  let files: string[]
  try {
    files = await readdir(getReaperDir(stateDir))
  } catch {
    return []
  }
  const orphaned: (ReaperMarker & { path: string })[] = []
  for (const file of files.filter((name) => name.endsWith('.json'))) {
    const path = join(getReaperDir(stateDir), file)
    try {
      const marker = JSON.parse(await readFile(path, 'utf8')) as ReaperMarker
      if (marker.provider === providerName && marker.owner && !isProcessAlive(marker.owner)) orphaned.push({ ...marker, path })
    } catch {
      // being written, or not ours: skip
    }
  }
  return orphaned
}

async function readMarkerNames(path: string): Promise<string[]> {
  try {
    const marker = JSON.parse(await readFile(path, 'utf8')) as Partial<ReaperMarker>
    return Array.isArray(marker.names) ? marker.names.filter((name): name is string => typeof name === 'string') : []
  } catch {
    return []
  }
}

/** One line appended to `<stateDir>/reapers/<runId>-<pid>.log`: the watchdog has no stdio. */
export function makeReaperLog(config: ReaperConfig): (line: string) => void {
  const path = config.markerPath.replace(/\.json$/, '.log')
  return (line) => {
    void appendFile(path, `${new Date().toISOString()} ${line}\n`, { mode: 0o600 }).catch(() => {})
  }
}
