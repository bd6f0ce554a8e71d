import type { StatusFunctions } from './expression-evaluator.js'

/**
 * `needs:` between jobs: checking the graph (unknown jobs, cycles), and what `success()` and `failure()`
 * mean in a job's `if:` — GitHub looks at every ancestor, so a job two steps behind a failure sees it
 * (the job in between was skipped, not failed). Pure functions, table-tested.
 */

export type JobResultValue = 'success' | 'failure' | 'cancelled' | 'skipped'

export interface JobNode {
  id: string
  needs: readonly string[]
}

/** Problems with `needs:` as `[jobId, message]`: an unknown job, a job needing itself, a cycle. */
export function checkJobGraph(jobs: readonly JobNode[]): Array<[string, string]> {
  const ids = new Set(jobs.map((job) => job.id))
  const problems: Array<[string, string]> = []
  for (const job of jobs) {
    for (const need of job.needs) {
      if (need === job.id) problems.push([job.id, `job "${job.id}" needs itself`])
      else if (!ids.has(need)) problems.push([job.id, `job "${job.id}" needs "${need}", which is not a job of this workflow (jobs: ${[...ids].join(', ')})`])
    }
  }
  if (problems.length > 0) return problems
  const cycle = findCycle(jobs)
  if (cycle) problems.push([cycle[0]!, `the needs of these jobs form a cycle: ${cycle.join(' → ')}`])
  return problems
}

function findCycle(jobs: readonly JobNode[]): string[] | undefined {
  const byId = new Map(jobs.map((job) => [job.id, job]))
  const state = new Map<string, 'visiting' | 'done'>()
  const stack: string[] = []
  const visit = (id: string): string[] | undefined => {
    if (state.get(id) === 'done') return undefined
    if (state.get(id) === 'visiting') return [...stack.slice(stack.indexOf(id)), id]
    state.set(id, 'visiting')
    stack.push(id)
    for (const need of byId.get(id)?.needs ?? []) {
      const cycle = visit(need)
      if (cycle) return cycle
    }
    stack.pop()
    state.set(id, 'done')
    return undefined
  }
  for (const job of jobs) {
    const cycle = visit(job.id)
    if (cycle) return cycle
  }
  return undefined
}

/** Every job `id` needs, directly or through others. */
export function getAncestors(jobs: readonly JobNode[], id: string): Set<string> {
  const byId = new Map(jobs.map((job) => [job.id, job]))
  const seen = new Set<string>()
  const pending = [...(byId.get(id)?.needs ?? [])]
  while (pending.length > 0) {
    const next = pending.pop()!
    if (seen.has(next)) continue
    seen.add(next)
    pending.push(...(byId.get(next)?.needs ?? []))
  }
  return seen
}

/**
 * The status functions in a job's `if:`. Ancestors with no result (not selected with `--job`) count as
 * succeeded. `cancelled` is the run's own state (Ctrl-C, a stopped server).
 */
export function getJobStatus(jobs: readonly JobNode[], id: string, results: ReadonlyMap<string, JobResultValue>, cancelled: boolean): StatusFunctions {
  const ancestors = [...getAncestors(jobs, id)].map((ancestor) => results.get(ancestor) ?? 'success')
  return {
    success: !cancelled && ancestors.every((result) => result === 'success'),
    failure: ancestors.some((result) => result === 'failure'),
    cancelled,
  }
}

/** Jobs whose `needs` (among `selected`) all have a result, and that have none yet: what can start now. */
export function getReadyJobs(jobs: readonly JobNode[], selected: ReadonlySet<string>, results: ReadonlyMap<string, JobResultValue>, started: ReadonlySet<string>): string[] {
  return jobs
    .filter((job) => selected.has(job.id) && !started.has(job.id))
    .filter((job) => job.needs.every((need) => !selected.has(need) || results.has(need)))
    .map((job) => job.id)
}
