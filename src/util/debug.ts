import { format } from 'node:util'

/**
 * `DEBUG=vm-pool*` (or `vm-pool:qemu`, comma-separated) turns on debug lines on stderr.
 * Callers must never pass secrets: tokens and keys are not logged anywhere.
 */
export function isDebugEnabled(namespace = 'vm-pool'): boolean {
  const patterns = (process.env.DEBUG ?? '').split(',').map((p) => p.trim()).filter(Boolean)
  return patterns.some((pattern) => {
    if (pattern === '*') return true
    if (pattern.endsWith('*')) return namespace.startsWith(pattern.slice(0, -1))
    return namespace === pattern
  })
}

export function createDebug(namespace: string): (...args: unknown[]) => void {
  return (...args) => {
    if (!isDebugEnabled(namespace)) return
    process.stderr.write(`${namespace} ${format(...args)}\n`)
  }
}
