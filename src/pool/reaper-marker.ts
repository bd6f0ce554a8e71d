import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { LeaseOwner, OwnerLiveness } from './owner-liveness.js'

/**
 * The marker file `<stateDir>/reapers/<runId>-<pid>.json` says "this owner still wants its watchdog" and
 * lists the VMs it holds right now. The watchdog exits when the file is gone (the pool drained). The names
 * are a second source beside the lease table: a crash is cleaned up even if the lease file was rebuilt and
 * lost its owners, and a live owner's VMs stay held even if the lease file was deleted or restored from an
 * old copy (gc and the rebuild of a corrupt file read them).
 */
export interface ReaperMarker {
  owner: LeaseOwner
  runId: string
  provider: string
  names: string[]
}

export function getReaperDir(stateDir: string): string {
  return join(stateDir, 'reapers')
}

/** Every readable marker of `providerName`; files being written or not ours are skipped. */
export async function readMarkers(stateDir: string, providerName: string): Promise<(ReaperMarker & { path: string })[]> {
  let files: string[]
  try {
    files = await readdir(getReaperDir(stateDir))
  } catch {
    return []
  }
  const markers: (ReaperMarker & { path: string })[] = []
  for (const file of files.filter((name) => name.endsWith('.json'))) {
    const path = join(getReaperDir(stateDir), file)
    try {
      const marker = JSON.parse(await readFile(path, 'utf8')) as ReaperMarker
      if (marker.provider === providerName && marker.owner && typeof marker.runId === 'string' && Array.isArray(marker.names)) markers.push({ ...marker, path })
    } catch {
      // being written, or not ours: skip
    }
  }
  return markers
}

/**
 * Markers whose owner is dead and that are still on disk: their watchdog died too (killed with its
 * session, a reboot) or could not delete everything. `vm-pool gc` finishes their job.
 */
export async function findOrphanedMarkers(stateDir: string, providerName: string, liveness: OwnerLiveness): Promise<(ReaperMarker & { path: string })[]> {
  const now = Date.now()
  return (await readMarkers(stateDir, providerName)).filter((marker) => !liveness.isAlive(marker.owner, now))
}

/** VM name → the live owner whose marker names it: those VMs are held, whatever the lease table says. */
export async function findLiveMarkerHolders(stateDir: string, providerName: string, liveness: OwnerLiveness): Promise<Map<string, { owner: LeaseOwner; runId: string }>> {
  const now = Date.now()
  const holders = new Map<string, { owner: LeaseOwner; runId: string }>()
  for (const marker of await readMarkers(stateDir, providerName)) {
    if (!liveness.isAlive(marker.owner, now)) continue
    for (const name of marker.names) if (typeof name === 'string') holders.set(name, { owner: marker.owner, runId: marker.runId })
  }
  return holders
}

export async function readMarkerNames(path: string): Promise<string[]> {
  try {
    const marker = JSON.parse(await readFile(path, 'utf8')) as Partial<ReaperMarker>
    return Array.isArray(marker.names) ? marker.names.filter((name): name is string => typeof name === 'string') : []
  } catch {
    return []
  }
}
