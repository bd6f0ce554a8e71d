import { invalidOptions } from '../errors.js'

const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/**
 * `90s`, `30m`, `2h`, `1d`, `500ms` → milliseconds. The unit is required: a bare `30` (meant as 30 days?
 * minutes?) was once read as 30 ms, which made `gc --older-than 30` delete everything.
 */
export function parseDuration(text: string, what = 'duration'): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text.trim())
  if (!match) throw invalidOptions(`invalid ${what} ${JSON.stringify(text)}: expected a number with a unit (ms, s, m, h, d), e.g. 90s, 30m, 2h, 1d`)
  return Math.round(Number(match[1]) * UNITS_MS[match[2]!]!)
}

/** 65_000 → `1m5s`; for ages in `vm-pool ls` and gc reasons. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '-'
  const s = Math.floor(ms / 1000)
  if (s < 60) return `${s}s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m}m${s % 60 ? `${s % 60}s` : ''}`
  const h = Math.floor(m / 60)
  if (h < 48) return `${h}h${m % 60 ? `${m % 60}m` : ''}`
  return `${Math.floor(h / 24)}d`
}
