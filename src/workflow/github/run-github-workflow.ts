import { getTimeoutScale } from '../../util/timeouts.js'
import type { SessionManager } from '../session-manager.js'
import { isTruthy } from './expression-evaluator.js'
import type { ExpressionValue } from './expression-parser.js'
import { evaluateCondition, evaluateValue, substituteTemplate } from './expression-template.js'
import { localTrigger, makeGithubContext, type GithubTrigger } from './github-context.js'
import type { GithubWorkflow } from './github-workflow-schema.js'
import { getAncestors, getJobStatus, getReadyJobs, type JobResultValue } from './job-graph.js'
import { mergeJobOutputs } from './job-outputs.js'
import { planGithubWorkflow, type PlanOptions, type PlannedJob } from './plan-github-workflow.js'
import { getRepoInfo, makeCheckoutTar, type RepoSource } from './repo-source.js'
import { runGithubCell, type CellResult, type GithubRunEvent, type RunCellOptions } from './run-github-cell.js'

/**
 * Run a GitHub Actions workflow: jobs start when the jobs they `need` have finished (independent jobs
 * run side by side), each matrix cell on exactly one VM of its own from `sessions` (so the session
 * limit — `--max-concurrent` — bounds the VMs of the whole run), `strategy.fail-fast` cancelling a
 * job's other cells, `max-parallel` bounding them, and a job's `if:` deciding with `needs` results.
 */

export interface GithubJobResult {
  id: string
  name: string
  result: JobResultValue
  /** Why a skipped job did not run. */
  reason?: string
  cells: CellResult[]
  /** `needs.<id>.outputs` for the jobs that need this one: its cells' `outputs`, the last to finish winning (job-outputs.ts). */
  outputs: Record<string, string>
}

export interface GithubWorkflowResult {
  kind: 'github'
  name: string
  source?: string
  /** `failure` when a job failed (a job with `continue-on-error` does not count). */
  status: 'success' | 'failure'
  durationMs: number
  /** Selected jobs, in file order. */
  jobs: GithubJobResult[]
  /** The run was aborted (`signal`): running commands were killed, always() steps ran, VMs released. */
  aborted?: boolean
}

export interface RunGithubWorkflowOptions extends PlanOptions {
  /** Where every cell's VM comes from, under its concurrency limit. */
  sessions: SessionManager
  /** The repository `actions/checkout` copies. */
  repo: RepoSource
  /** The event (a webhook's); default: a push of the repository's current branch. */
  trigger?: GithubTrigger
  /** Leave every VM running afterwards (debug mode). @default false */
  keepVm?: boolean
  signal?: AbortSignal
  onEvent?: (event: GithubRunEvent) => void
}

export async function runGithubWorkflow(workflow: GithubWorkflow, options: RunGithubWorkflowOptions): Promise<GithubWorkflowResult> {
  const plan = planGithubWorkflow(workflow, options)
  const scale = getTimeoutScale()
  const started = performance.now()
  const trigger = options.trigger ?? localTrigger(await getRepoInfo(options.repo))
  let tar: Promise<Buffer> | undefined
  const emit = (event: GithubRunEvent) => {
    try {
      options.onEvent?.(event)
    } catch {
      // a throwing listener must not stop the run
    }
  }
  const cellOptions: Omit<RunCellOptions, 'signal'> = {
    sessions: options.sessions,
    trigger,
    runId: options.sessions.runId,
    checkout: () => (tar ??= makeCheckoutTar(options.repo)),
    keepVm: options.keepVm ?? false,
    scale,
    emit,
  }
  // The workflow env is substituted once; jobs add theirs per cell.
  const baseContexts: Record<string, ExpressionValue> = { github: makeGithubContext({ trigger, workflow: workflow.name, runId: options.sessions.runId, job: '', workspace: '', vm: '', tempDir: '' }), vars: {}, inputs: {}, secrets: {}, env: {} }
  const workflowEnv: Record<string, string> = {}
  for (const [key, value] of Object.entries(workflow.env)) workflowEnv[key] = substituteTemplate(value, { contexts: { ...baseContexts, env: workflowEnv } })
  baseContexts.env = workflowEnv

  const nodes = workflow.jobs.map((job) => ({ id: job.id, needs: job.needs }))
  const selected = new Set(plan.jobs.map((planned) => planned.job.id))
  const results = new Map<string, JobResultValue>()
  const jobResults = new Map<string, GithubJobResult>()
  const startedJobs = new Set<string>()
  const running = new Map<string, Promise<void>>()

  const runJob = async (planned: PlannedJob): Promise<GithubJobResult> => {
    const { job } = planned
    const aborted = options.signal?.aborted === true
    const status = getJobStatus(nodes, job.id, results, aborted)
    const needs: Record<string, ExpressionValue> = Object.fromEntries(job.needs.map((need) => [need, { result: results.get(need) ?? 'success', outputs: jobResults.get(need)?.outputs ?? {} }]))
    let run: boolean
    try {
      run = evaluateCondition(job.if, { contexts: { ...baseContexts, needs }, status })
    } catch (error) {
      return { id: job.id, name: planned.name, result: 'failure', reason: `${job.where}: if: ${(error as Error).message}`, cells: [], outputs: {} }
    }
    if (!run) {
      const unsuccessful = [...getAncestors(nodes, job.id)].filter((id) => (results.get(id) ?? 'success') !== 'success').map((id) => `${id}: ${results.get(id)}`)
      const reason = aborted ? 'the run was cancelled' : !status.success && job.if === undefined ? `not every job it needs succeeded (${unsuccessful.join(', ')})` : `if: ${String(job.if)} is false`
      emit({ type: 'job-skipped', workflow: planned.name, job: job.id, reason })
      return { id: job.id, name: planned.name, result: 'skipped', reason, cells: [], outputs: {} }
    }
    const { cells, outputs } = await runCells(planned, needs, { ...baseContexts, needs })
    const counted = cells.filter((cell) => !cell.continuedOnError)
    const result: JobResultValue = counted.some((cell) => cell.status === 'failure') ? 'failure' : counted.some((cell) => cell.status === 'cancelled') ? 'cancelled' : 'success'
    return { id: job.id, name: planned.name, result, cells, outputs }
  }

  const runCells = async (planned: PlannedJob, needs: Record<string, ExpressionValue>, contexts: Record<string, ExpressionValue>): Promise<{ cells: CellResult[]; outputs: Record<string, string> }> => {
    const { job } = planned
    const failFast = isTruthy(typeof job.failFast === 'string' ? evaluateValue(job.failFast, { contexts }) : job.failFast)
    const maxParallel = job.maxParallel === undefined ? Infinity : Math.max(1, Number(typeof job.maxParallel === 'string' ? evaluateValue(job.maxParallel, { contexts }) : job.maxParallel) || 1)
    const cancel = new AbortController()
    const signal = options.signal ? AbortSignal.any([options.signal, cancel.signal]) : cancel.signal
    const results: CellResult[] = new Array(planned.cells.length)
    const finished: Record<string, string>[] = []
    let next = 0
    const worker = async () => {
      while (next < planned.cells.length) {
        const index = next++
        const cell = planned.cells[index]!
        const strategy = { 'fail-fast': failFast, 'job-index': index, 'job-total': planned.cells.length, 'max-parallel': Number.isFinite(maxParallel) ? maxParallel : planned.cells.length }
        const result = await runGithubCell(
          { workflow, job, label: cell.label, matrix: cell.matrix, spec: cell.spec, needs, strategy, workflowEnv },
          { ...cellOptions, signal },
        )
        if (result.status === 'failure') {
          const continueOnError = job.continueOnError === true || (typeof job.continueOnError === 'string' && isTruthy(evaluateValue(job.continueOnError, { contexts: { ...contexts, matrix: cell.matrix } })))
          if (continueOnError) result.continuedOnError = true
          else if (failFast && !cancel.signal.aborted) cancel.abort(new Error(`fail-fast: ${cell.label} failed`))
        }
        results[index] = result
        if (result.outputs) finished.push(result.outputs)
      }
    }
    await Promise.all(Array.from({ length: Math.min(planned.cells.length, maxParallel) }, worker))
    return { cells: results, outputs: mergeJobOutputs(finished) }
  }

  const schedule = () => {
    for (const id of getReadyJobs(nodes, selected, results, startedJobs)) {
      startedJobs.add(id)
      const planned = plan.jobs.find((candidate) => candidate.job.id === id)!
      const done = runJob(planned).then((jobResult) => {
        results.set(id, jobResult.result)
        jobResults.set(id, jobResult)
        running.delete(id)
      })
      running.set(id, done)
    }
  }
  schedule()
  while (running.size > 0) {
    await Promise.race(running.values())
    schedule()
  }

  const jobs = plan.jobs.map((planned) => jobResults.get(planned.job.id)!)
  const result: GithubWorkflowResult = {
    kind: 'github',
    name: workflow.name,
    status: jobs.some((job) => job.result === 'failure' || job.result === 'cancelled') || options.signal?.aborted ? 'failure' : 'success',
    durationMs: Math.round(performance.now() - started),
    jobs,
  }
  if (workflow.source !== undefined) result.source = workflow.source
  if (options.signal?.aborted) result.aborted = true
  return result
}
