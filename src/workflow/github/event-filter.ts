import type { EventFilter } from './github-workflow-schema.js'

/**
 * Does a workflow's `on:` start it for this event? GitHub's rules for `push` and `pull_request`:
 * branch filters (`branches`, `branches-ignore`) and tag filters (`tags`, `tags-ignore`) with its glob
 * patterns (`*` within a path segment, `**` across, `?`, `+`, `[...]`, a leading `!` excluding again);
 * a push filtered on branches only ignores tags and the other way round; a pull request is matched on
 * its base branch and its action (`types`, by default opened, synchronize, reopened). `paths` filters
 * are not evaluated (docs/workflows.md). Pure functions, table-tested.
 */

export interface WebhookEvent {
  /** `push`, `pull_request`, … */
  name: string
  /** push: `refs/heads/main` or `refs/tags/v1`. */
  ref?: string
  /** pull_request: the base branch. */
  baseRef?: string
  /** pull_request: `opened`, `synchronize`, `closed`, … */
  action?: string
}

const DEFAULT_PULL_REQUEST_TYPES = ['opened', 'synchronize', 'reopened']

export function matchesEvent(triggers: Readonly<Record<string, EventFilter>>, event: WebhookEvent): boolean {
  const filter = triggers[event.name]
  if (filter === undefined) return false
  if (event.name === 'pull_request') {
    if (!(filter.types ?? DEFAULT_PULL_REQUEST_TYPES).includes(event.action ?? 'opened')) return false
    return matchesRefFilters(event.baseRef ?? '', filter.branches, filter.branchesIgnore)
  }
  if (event.name !== 'push') return true
  const ref = event.ref ?? ''
  const branchFiltered = filter.branches !== undefined || filter.branchesIgnore !== undefined
  const tagFiltered = filter.tags !== undefined || filter.tagsIgnore !== undefined
  if (ref.startsWith('refs/tags/')) {
    if (!tagFiltered) return !branchFiltered
    return matchesRefFilters(ref.slice('refs/tags/'.length), filter.tags, filter.tagsIgnore)
  }
  if (ref.startsWith('refs/heads/')) {
    if (!branchFiltered) return !tagFiltered
    return matchesRefFilters(ref.slice('refs/heads/'.length), filter.branches, filter.branchesIgnore)
  }
  return false
}

function matchesRefFilters(name: string, include: readonly string[] | undefined, ignore: readonly string[] | undefined): boolean {
  if (include !== undefined) return matchesPatterns(name, include)
  if (ignore !== undefined) return !matchesPatterns(name, ignore)
  return true
}

/** Patterns in order; a later `!pattern` excludes what an earlier one included. */
export function matchesPatterns(name: string, patterns: readonly string[]): boolean {
  let matched = false
  for (const pattern of patterns) {
    if (pattern.startsWith('!')) {
      if (matched && globToRegExp(pattern.slice(1)).test(name)) matched = false
    } else if (!matched && globToRegExp(pattern).test(name)) {
      matched = true
    }
  }
  return matched
}

export function globToRegExp(pattern: string): RegExp {
  let source = ''
  for (let i = 0; i < pattern.length; i++) {
    const char = pattern[i]!
    if (char === '*' && pattern[i + 1] === '*') {
      source += '.*'
      i++
    } else if (char === '*') source += '[^/]*'
    else if (char === '?') source += '.'
    else if (char === '+') source += '+'
    else if (char === '[') {
      const end = pattern.indexOf(']', i + 1)
      if (end < 0) source += '\\['
      else {
        source += `[${pattern.slice(i + 1, end).replaceAll('\\', '\\\\')}]`
        i = end
      }
    } else source += char.replace(/[.^$|(){}\\/]/g, '\\$&')
  }
  return new RegExp(`^${source}$`)
}
