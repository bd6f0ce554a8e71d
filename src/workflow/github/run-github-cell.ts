import { isVmPoolError } from '../../errors.js'
import { createDebug } from '../../util/debug.js'
import { scaleTimeoutBy } from '../../util/timeouts.js'
import type { Vm } from '../../providers/vm-provider.js'
import { ABORTED_CLEANUP_TIMEOUT_MS, NO_EXIT_CODE, type KeptVm, type StepError, type WorkflowEvent } from '../run-workflow.js'
import type { SessionManager, WorkflowSession } from '../session-manager.js'
import type { EvaluationScope } from './expression-evaluator.js'
import type { ExpressionValue } from './expression-parser.js'
import { conditionUsesStatus, evaluateCondition, substituteTemplate } from './expression-template.js'
import { addToPath } from './file-commands.js'
import { makeGithubContext, makeGithubEnv, makeRunnerContext, type GithubTrigger, type JobScope } from './github-context.js'
import { defaultStepName, runGithubStep, skippedStep, stepName, type GithubStepResult } from './github-step.js'
import type { GithubJob, GithubWorkflow } from './github-workflow-schema.js'
import { evaluateJobOutputs } from './job-outputs.js'
import type { MatrixCell } from './matrix.js'
import type { RunnerSpec } from './runs-on-mapping.js'

const debug = createDebug('vm-pool:github')

/** A job without `timeout-minutes` is stopped after 360 minutes, GitHub's default (scaled by `VM_POOL_TIMEOUT_SCALE`). */
export const DEFAULT_JOB_TIMEOUT_MS = 360 * 60_000

/** "Set up job" (create the workspace) is one small command; this long is plenty even under TCG (scaled). */
export const SET_UP_JOB_TIMEOUT_MS = 60_000

/** Where the checkout goes, relative to the VM user's home; `github.workspace` is its absolute path. */
export const WORKSPACE_DIR = 'workspace'

export type CellStatus = 'success' | 'failure' | 'cancelled'

/** One matrix cell of one job (a job without a matrix is one cell): everything it ran, on one VM. */
export interface CellResult {
  job: string
  /** `build (debian, 20)`. */
  label: string
  matrix: MatrixCell
  status: CellStatus
  /** The one VM every command of the cell ran on ('' when none could be had). */
  vm: string
  spec: RunnerSpec
  durationMs: number
  /** "Set up job" (phase `setup`), then the job's steps in order, skipped ones included. */
  steps: GithubStepResult[]
  /** It failed, but the job has `continue-on-error`: the job and the run still succeed. */
  continuedOnError?: boolean
  keptVm?: KeptVm
  releaseError?: StepError
  /** No VM could be had (create failed, cancelled while queued), or an `outputs:` value failed to evaluate. */
  error?: StepError
  /** The job's `outputs:` as this cell substituted them after its steps (absent when the steps did not run). */
  outputs?: Record<string, string>
}

/** Progress of a run, for the CLI: the vm-pool workflow events with the cell label as `workflow`. */
export type GithubRunEvent =
  | (Exclude<WorkflowEvent, { type: 'command-end' }> & { job: string })
  | { type: 'command-end'; workflow: string; job: string; vm: string; result: GithubStepResult }
  | { type: 'job-skipped'; workflow: string; job: string; reason: string }
  | { type: 'cell-no-vm'; workflow: string; job: string; reason: string }

export interface CellPlan {
  workflow: GithubWorkflow
  job: GithubJob
  label: string
  matrix: MatrixCell
  spec: RunnerSpec
  /** `needs.<id>.result` of the jobs this one needs. */
  needs: Record<string, ExpressionValue>
  strategy: Record<string, ExpressionValue>
  /** The workflow env, substituted once per run. */
  workflowEnv: Record<string, string>
}

export interface RunCellOptions {
  sessions: SessionManager
  trigger: GithubTrigger
  runId: string
  checkout: () => Promise<Buffer>
  keepVm: boolean
  scale: number
  /** Ctrl-C, a stopped server, or a fail-fast cancel of this job's other cells. */
  signal?: AbortSignal
  emit: (event: GithubRunEvent) => void
}

/**
 * Run one cell on exactly one VM: open a session (the VM is created before the first command), set up
 * the workspace, run every step on that VM with GitHub's `if:` rules, release the session whatever happens.
 */
export async function runGithubCell(plan: CellPlan, options: RunCellOptions): Promise<CellResult> {
  const { job, label } = plan
  const started = performance.now()
  const result: CellResult = { job: job.id, label, matrix: plan.matrix, status: 'success', vm: '', spec: plan.spec, durationMs: 0, steps: [] }
  let session: WorkflowSession
  try {
    session = await options.sessions.openSession({ ...(options.signal ? { signal: options.signal } : {}), spec: plan.spec })
  } catch (error) {
    result.status = options.signal?.aborted ? 'cancelled' : 'failure'
    result.error = toStepError(error)
    result.durationMs = Math.round(performance.now() - started)
    options.emit({ type: 'cell-no-vm', workflow: label, job: job.id, reason: result.error.message })
    return result
  }
  const vm = session.vm
  result.vm = vm.name
  const emit = (event: Exclude<WorkflowEvent, { type: 'command-end' }>) => options.emit({ ...event, job: job.id })
  emit({ type: 'session-open', workflow: label, vm: vm.name, durationMs: Math.round(performance.now() - started) })
  const record = (step: GithubStepResult) => {
    result.steps.push(step)
    options.emit({ type: 'command-end', workflow: label, job: job.id, vm: vm.name, result: step })
  }
  try {
    await runSteps(plan, options, vm, record, result)
  } finally {
    try {
      await session.release({ keepVm: options.keepVm })
      if (options.keepVm) result.keptVm = describeKeptVm(vm, options.sessions)
    } catch (error) {
      result.releaseError = toStepError(error)
      result.status = 'failure'
    }
    emit({ type: 'session-release', workflow: label, vm: vm.name, kept: options.keepVm, ...(result.releaseError ? { error: result.releaseError } : {}) })
  }
  result.durationMs = Math.round(performance.now() - started)
  return result
}

async function runSteps(plan: CellPlan, options: RunCellOptions, vm: Vm, record: (step: GithubStepResult) => void, result: CellResult): Promise<void> {
  const { job, workflow } = plan
  const setup = await setUpJob(vm, options)
  record(setup.result)
  if (setup.result.exitCode !== 0 || setup.result.error) {
    result.status = options.signal?.aborted ? 'cancelled' : 'failure'
    for (const step of job.steps) record(skippedStep(step, step.name ?? defaultStepName(step), vm.name))
    return
  }
  const scope: JobScope = { trigger: options.trigger, workflow: workflow.name, runId: options.runId, job: job.id, workspace: setup.workspace, vm: vm.name, tempDir: setup.tempDir }
  const contexts: Record<string, ExpressionValue> = {
    github: makeGithubContext(scope),
    runner: makeRunnerContext(scope),
    matrix: plan.matrix,
    strategy: plan.strategy,
    needs: plan.needs,
    steps: {},
    job: { status: 'success' },
    secrets: {},
    vars: {},
    inputs: {},
    env: { ...plan.workflowEnv },
  }
  const deadline = performance.now() + jobTimeoutMs(job, { contexts }, options.scale)
  let failed = false
  // GITHUB_PATH directories so far, the most recently added first.
  let pathPrefix: string[] = []
  for (const [key, value] of Object.entries(job.env)) {
    ;(contexts.env as Record<string, string>)[key] = substituteTemplate(value, { contexts })
  }
  for (const step of job.steps) {
    const cancelled = options.signal?.aborted === true
    const status = { success: !failed && !cancelled, failure: failed, cancelled }
    contexts.job = { status: cancelled ? 'cancelled' : failed ? 'failure' : 'success' }
    const evaluation: EvaluationScope = { contexts, status }
    const name = stepName(step, evaluation)
    let run: boolean
    try {
      run = evaluateCondition(step.if, evaluation)
    } catch (error) {
      run = false
      failed = true
      record({ ...skippedStep(step, name, vm.name), skipped: false, outcome: 'failure', error: { code: 'VMPOOL_WORKFLOW_INVALID', message: `${step.where}: if: ${(error as Error).message}` } })
      continue
    }
    let stepResult: GithubStepResult
    let outputs: Record<string, string> = {}
    if (!run) {
      stepResult = skippedStep(step, name, vm.name)
    } else {
      // After a cancel only always()/cancelled() steps get here: they run without the signal, capped.
      const afterCancel = cancelled && conditionUsesStatus(step.if)
      stepResult = await runGithubStep(step, name, {
        workflow,
        job,
        vm,
        scope: evaluation,
        baseEnv: makeGithubEnv(scope),
        workspace: setup.workspace,
        checkout: options.checkout,
        scale: options.scale,
        remainingMs: deadline - performance.now(),
        ...(afterCancel || !options.signal ? {} : { signal: options.signal }),
        ...(afterCancel ? { capMs: scaleTimeoutBy(ABORTED_CLEANUP_TIMEOUT_MS, options.scale) } : {}),
        pathPrefix,
        fileCommands: {
          dir: setup.tempDir,
          // GITHUB_ENV goes under every later step's own env (GitHub's precedence), and into ${{ env }}.
          apply: (commands) => {
            Object.assign(contexts.env as Record<string, string>, commands.env)
            outputs = commands.output
            pathPrefix = addToPath(pathPrefix, commands.path)
          },
        },
      })
      if (stepResult.outcome === 'failure' && !stepResult.continuedOnError) failed = true
    }
    if (step.id !== undefined) {
      const conclusion = stepResult.continuedOnError ? 'success' : stepResult.outcome
      ;(contexts.steps as Record<string, ExpressionValue>)[step.id] = { outcome: stepResult.outcome, conclusion, outputs }
    }
    record(stepResult)
    debug('%s %s: %s', plan.label, name, stepResult.outcome)
  }
  try {
    result.outputs = evaluateJobOutputs(job, { contexts })
  } catch (error) {
    failed = true
    result.error = { code: 'VMPOOL_WORKFLOW_INVALID', message: (error as Error).message }
  }
  result.status = failed ? 'failure' : options.signal?.aborted ? 'cancelled' : 'success'
}

/** "Set up job": the workspace and a directory for GITHUB_ENV and friends, one command on the cell's VM. */
async function setUpJob(vm: Vm, options: RunCellOptions): Promise<{ result: GithubStepResult; workspace: string; tempDir: string }> {
  const command = `mkdir -p ${WORKSPACE_DIR} .vm-pool-gha && cd .vm-pool-gha && : > env && : > output && : > path && : > summary && cd ../${WORKSPACE_DIR} && pwd`
  const base = { phase: 'setup' as const, name: 'Set up job', command, vm: vm.name }
  const started = performance.now()
  try {
    const exec = await vm.exec(command, { timeoutMs: scaleTimeoutBy(SET_UP_JOB_TIMEOUT_MS, options.scale), ...(options.signal ? { signal: options.signal } : {}) })
    const workspace = exec.stdout.trim().split('\n').at(-1) ?? ''
    const ok = exec.exitCode === 0 && workspace.startsWith('/')
    const result: GithubStepResult = { ...base, exitCode: ok ? 0 : exec.exitCode || 1, stdout: exec.stdout, stderr: exec.stderr, durationMs: exec.durationMs, outcome: ok ? 'success' : 'failure' }
    return { result, workspace, tempDir: `${workspace.replace(/\/[^/]*$/, '')}/.vm-pool-gha` }
  } catch (error) {
    const result: GithubStepResult = { ...base, exitCode: NO_EXIT_CODE, stdout: '', stderr: '', durationMs: Math.round(performance.now() - started), outcome: 'failure', error: toStepError(error) }
    return { result, workspace: '', tempDir: '' }
  }
}

function jobTimeoutMs(job: GithubJob, scope: EvaluationScope, scale: number): number {
  if (job.timeoutMinutes === undefined) return scaleTimeoutBy(DEFAULT_JOB_TIMEOUT_MS, scale)
  const minutes = Number(typeof job.timeoutMinutes === 'number' ? job.timeoutMinutes : substituteTemplate(job.timeoutMinutes, scope))
  return scaleTimeoutBy(minutes > 0 ? minutes * 60_000 : DEFAULT_JOB_TIMEOUT_MS, scale)
}

function describeKeptVm(vm: Vm, sessions: SessionManager): KeptVm {
  const help = sessions.provider.describe?.(vm.record)
  return {
    name: vm.name,
    provider: vm.provider,
    record: vm.record,
    reach: help?.reach ?? `vm-pool ls --provider ${vm.provider} shows it; from code: provider.connect(result.keptVm.record)`,
    remove: help?.remove ?? `from code: provider.delete('${vm.name}'); or vm-pool gc --provider ${vm.provider}, which deletes every orphaned VM, this one included`,
  }
}

function toStepError(error: unknown): StepError {
  if (isVmPoolError(error)) return { code: error.code, message: error.message }
  return { code: 'VMPOOL_INTERNAL', message: (error as Error)?.message ?? String(error) }
}
