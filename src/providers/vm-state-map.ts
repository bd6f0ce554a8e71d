import type { VmState } from './vm-provider.js'

/**
 * A provider's own state words mapped to `VmState`, case-insensitively; anything not listed is
 * `unknown`. One table per provider instead of one switch each.
 */
export function makeVmStateMap(table: Partial<Record<Exclude<VmState, 'unknown'>, readonly string[]>>): (state: string) => VmState {
  const byWord = new Map<string, VmState>()
  for (const [state, words] of Object.entries(table) as Array<[VmState, readonly string[]]>) {
    for (const word of words) byWord.set(word.toLowerCase(), state)
  }
  return (state) => byWord.get(state.toLowerCase()) ?? 'unknown'
}
