import { readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { getReaperDir } from './reaper-marker.js'

/** A reaper log older than this is removed when the next pool starts its watchdog. */
export const REAPER_LOG_MAX_AGE_MS = 7 * 24 * 60 * 60_000
/** At most this many reaper logs are kept (the newest); one is written per pool that started a watchdog. */
export const REAPER_LOG_MAX_COUNT = 50

/**
 * Each watchdog appends to `<stateDir>/reapers/<runId>-<pid>.log` (it has no stdio), one file per pool: without
 * pruning they pile up. Removes logs past the age or beyond the count, oldest first. Only `.log` files: the
 * `.json` markers say who holds what and belong to gc and the reapers. Best effort: never throws.
 */
export async function pruneReaperLogs(stateDir: string, now = Date.now(), limits = { maxAgeMs: REAPER_LOG_MAX_AGE_MS, maxCount: REAPER_LOG_MAX_COUNT }): Promise<string[]> {
  const dir = getReaperDir(stateDir)
  const names = await readdir(dir).catch(() => [] as string[])
  const logs: { path: string; mtimeMs: number }[] = []
  for (const name of names.filter((entry) => entry.endsWith('.log'))) {
    const info = await stat(join(dir, name)).catch(() => undefined)
    if (info?.isFile()) logs.push({ path: join(dir, name), mtimeMs: info.mtimeMs })
  }
  logs.sort((a, b) => b.mtimeMs - a.mtimeMs)
  const doomed = logs.filter((log, index) => index >= limits.maxCount || now - log.mtimeMs > limits.maxAgeMs).map((log) => log.path)
  for (const path of doomed) await rm(path, { force: true }).catch(() => {})
  return doomed
}
