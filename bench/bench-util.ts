/** Shared by the bench sections: they run under Node's type stripping against the built dist/. */

export type Dist = typeof import('../dist/index.js')

/** The built package (run `npm run build` first; `npm run bench` does). */
export const loadDist = (): Promise<Dist> => import(new URL('../dist/index.js', import.meta.url).href) as Promise<Dist>

/** The p-th percentile (nearest rank) of the samples, in their unit. */
export function percentile(samples: readonly number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!
}
