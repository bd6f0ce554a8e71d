import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)

/**
 * A CommonJS dependency loaded on its first use instead of at import: undici, ssh2 and pg cost about 0.5 s of
 * CPU together to load, and every process that imports vm-pool (each Vitest worker, every CLI command, the
 * watchdog) paid it whether or not its provider or store needed them (docs/architecture.md, "Start-up").
 */
export function lazyModule<T>(id: string): () => T {
  let loaded: T | undefined
  return () => (loaded ??= require(id) as T)
}
