import { format } from 'node:util'

/**
 * `DEBUG=vm-pool*` (or `vm-pool:qemu`, comma-separated) turns on debug lines on stderr.
 * Callers must never pass secrets: tokens and keys are not logged anywhere.
 */
export function isDebugEnabled(namespace = 'vm-pool'): boolean {
  return getPatterns().some((pattern) => {
    if (pattern === '*') return true
    if (pattern.endsWith('*')) return namespace.startsWith(pattern.slice(0, -1))
    return namespace === pattern
  })
}

/** DEBUG's patterns, parsed again only when the variable changes: a debug line that is off costs a lookup (warm cycles call several). */
let parsed: { raw: string; patterns: string[] } = { raw: '', patterns: [] }
function getPatterns(): string[] {
  const raw = process.env.DEBUG ?? ''
  if (raw !== parsed.raw) parsed = { raw, patterns: raw.split(',').map((p) => p.trim()).filter(Boolean) }
  return parsed.patterns
}

export function createDebug(namespace: string): (...args: unknown[]) => void {
  return (...args) => {
    if (!isDebugEnabled(namespace)) return
    process.stderr.write(`${namespace} ${format(...args)}\n`)
  }
}
