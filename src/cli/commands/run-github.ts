import { resolve } from 'node:path'
import { isVmPoolError } from '../../errors.js'
import { printable } from '../../util/printable-text.js'
import { getTimeoutScale } from '../../util/timeouts.js'
import { succeeded } from '../../workflow/run-workflow.js'
import { createHistoryRecorder } from '../../workflow/history/history-recorder.js'
import type { GithubWorkflow } from '../../workflow/github/github-workflow-schema.js'
import { loadGithubWorkflow } from '../../workflow/github/load-github-workflow.js'
import { formatPlan, planGithubWorkflow, type WorkflowPlan } from '../../workflow/github/plan-github-workflow.js'
import { findRepoDir, isGitRepository } from '../../workflow/github/repo-source.js'
import { loadRunsOnMapping, type RunsOnMapping } from '../../workflow/github/runs-on-mapping.js'
import type { GithubRunEvent } from '../../workflow/github/run-github-cell.js'
import { runGithubWorkflow, type GithubWorkflowResult } from '../../workflow/github/run-github-workflow.js'
import { isCheckout } from '../../workflow/github/step-shell.js'
import { UsageError, getProviderName, getProviderOptions, type CliIo } from '../cli-command.js'
import type { GithubRunValues } from './run-github-options.js'
import { openHistory } from '../open-history.js'
import { formatDuration, formatEvent, formatKeptVm, formatStepSummary } from '../run-output.js'
import { openRunSessions, parseMaxConcurrent } from '../run-sessions.js'

/** `vm-pool run` on GitHub Actions workflow files (docs/workflows.md, "GitHub Actions files"), loaded by run.ts only for them. */

export async function runGithubFiles(paths: string[], values: GithubRunValues, io: CliIo): Promise<number> {
  const jobs = (values.job as string[] | undefined) ?? []
  const matrix = parseMatrixFilters((values.matrix as string[] | undefined) ?? [])
  if ((jobs.length > 0 || Object.keys(matrix).length > 0) && paths.length > 1) throw new UsageError('--job and --matrix apply to one workflow file at a time')
  const maxConcurrent = parseMaxConcurrent(values['max-concurrent'] as string | undefined)
  getTimeoutScale(io.env)
  const json = values.json === true

  // Every file is read, validated and planned before any VM exists.
  const loaded = await Promise.allSettled(
    paths.map(async (path) => {
      const workflow = await loadGithubWorkflow(path, { strict: values.strict === true })
      const repoDir = typeof values.repo === 'string' ? resolve(values.repo) : await findRepoDir(path)
      const runsOn = await loadRunsOnMapping(values.runners as string | undefined, repoDir)
      return { workflow, repoDir, runsOn, plan: planGithubWorkflow(workflow, { jobs, matrix, runsOn }) }
    }),
  )
  const failures = loaded.filter((result): result is PromiseRejectedResult => result.status === 'rejected')
  if (failures.length > 0) {
    for (const { reason } of failures) {
      if (!isVmPoolError(reason)) throw reason
      io.stderr.write(`${printable(reason.message, { multiline: true })}\n`)
    }
    io.stderr.write(`vm-pool run: nothing was run (${failures.length} of ${paths.length} workflow files invalid)\n`)
    return 2
  }
  const runs = loaded.map((result) => (result as PromiseFulfilledResult<{ workflow: GithubWorkflow; repoDir: string; runsOn: RunsOnMapping; plan: WorkflowPlan }>).value)
  if (values.list === true) {
    if (json) io.stdout.write(`${JSON.stringify(runs.map(({ plan, repoDir }) => ({ ...plan, repoDir })), null, 2)}\n`)
    else for (const { plan } of runs) io.stdout.write(formatPlan(plan))
    return 0
  }
  for (const { workflow } of runs) for (const warning of workflow.warnings) io.stderr.write(`warning: ${warning}\n`)
  for (const { workflow, repoDir } of runs) {
    const checkout = workflow.jobs.some((job) => job.steps.some((step) => step.uses !== undefined && isCheckout(step.uses)))
    if (checkout && !(await isGitRepository(repoDir))) {
      io.stderr.write(`vm-pool run: ${workflow.source}: actions/checkout copies the tracked files of a git repository, and ${repoDir} is not in one (git init; git add), or pass --repo DIR\n`)
      return 2
    }
  }

  const { sessions, close } = await openRunSessions(getProviderName(values.provider as string | undefined, io.env), getProviderOptions(io.env), maxConcurrent)
  const history = openHistory(io)
  const recordHistory = createHistoryRecorder(history, (message) => io.stderr.write(`${message}\n`))
  try {
    const progress = json ? io.stderr : io.stdout
    const prefix = (workflow: GithubWorkflow, label: string) => printable(runs.length > 1 ? `${workflow.name} / ${label}` : label)
    const width = Math.max(...runs.flatMap(({ workflow, plan }) => plan.jobs.flatMap((job) => job.cells.map((cell) => prefix(workflow, cell.label).length))))
    const tag = (workflow: GithubWorkflow, label: string) => `[${prefix(workflow, label)}]`.padEnd(width + 2)
    const started = performance.now()
    const results = await Promise.all(
      runs.map(({ workflow, repoDir, runsOn }) =>
        runGithubWorkflow(workflow, {
          sessions,
          repo: { dir: repoDir },
          jobs,
          matrix,
          runsOn,
          keepVm: values['keep-vm'] === true,
          signal: io.signal,
          onEvent: (event) => progress.write(formatGithubEvent(tag(workflow, event.workflow), event, workflow, recordHistory)),
        }),
      ),
    )
    for (const [index, result] of results.entries()) {
      for (const cell of result.jobs.flatMap((job) => job.cells)) if (cell.keptVm) progress.write(formatKeptVm(tag(runs[index]!.workflow, cell.label), cell.keptVm))
    }
    if (json) io.stdout.write(`${JSON.stringify(results, null, 2)}\n`)
    progress.write(formatSummary(results, Math.round(performance.now() - started), io.signal.aborted))
    if (io.signal.aborted) return 130
    return results.every((result) => result.status === 'success') ? 0 : 1
  } finally {
    history?.close()
    await close()
  }
}

function formatGithubEvent(tag: string, event: GithubRunEvent, workflow: GithubWorkflow, record: ReturnType<typeof createHistoryRecorder>): string {
  if (event.type === 'job-skipped') return `${tag} job ${printable(event.job)} skipped: ${printable(event.reason, { multiline: true })}\n`
  if (event.type === 'cell-no-vm') return `${tag} no VM: ${printable(event.reason, { multiline: true })}\n`
  const note = event.type === 'command-end' ? record(workflow.name, event.workflow, event.result) : undefined
  const summary = event.type === 'command-end' ? event.result.summary : undefined
  return formatEvent(tag, event, note) + (summary === undefined ? '' : formatStepSummary(summary))
}

/** `--matrix node=20 --matrix os=debian` → `{ node: '20', os: 'debian' }`. */
function parseMatrixFilters(values: string[]): Record<string, string> {
  const filters: Record<string, string> = {}
  for (const value of values) {
    const match = /^([^=\s]+)=(.*)$/.exec(value)
    if (!match) throw new UsageError(`--matrix expects KEY=VALUE, got ${JSON.stringify(value)}`)
    filters[match[1]!] = match[2]!
  }
  return filters
}

function formatSummary(results: GithubWorkflowResult[], durationMs: number, aborted: boolean): string {
  const parts = results.map((result) => {
    const by = (outcome: string) => result.jobs.filter((job) => job.result === outcome)
    const failed = by('failure').map((job) => {
      const step = job.cells.flatMap((cell) => cell.steps).find((candidate) => !candidate.skipped && !candidate.continuedOnError && !succeeded(candidate))
      return printable(step ? `${job.id}: step "${step.name}"${step.timedOut ? ' timed out' : ''}` : job.id)
    })
    const counts = [`${by('success').length} succeeded`]
    if (failed.length > 0) counts.push(`${failed.length} failed (${failed.join('; ')})`)
    if (by('cancelled').length > 0) counts.push(`${by('cancelled').length} cancelled`)
    if (by('skipped').length > 0) counts.push(`${by('skipped').length} skipped (${printable(by('skipped').map((job) => job.id).join(', '))})`)
    const vms = result.jobs.reduce((n, job) => n + job.cells.filter((cell) => cell.vm !== '').length, 0)
    return `${printable(result.name)}: ${result.jobs.length} job${result.jobs.length === 1 ? '' : 's'} on ${vms} VM${vms === 1 ? '' : 's'}, ${counts.join(', ')}`
  })
  const interrupted = aborted ? '; interrupted: running commands killed, always() steps ran' : ''
  return `vm-pool run: ${parts.join('; ')} in ${formatDuration(durationMs)}${interrupted}\n`
}
