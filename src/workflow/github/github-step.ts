import { isVmPoolError } from '../../errors.js'
import type { Vm } from '../../providers/vm-provider.js'
import { scaleTimeoutBy } from '../../util/timeouts.js'
import { ABORTED_CLEANUP_TIMEOUT_MS, DEFAULT_STEP_TIMEOUT_MS, NO_EXIT_CODE, type StepError, type StepResult } from '../run-workflow.js'
import type { EvaluationScope } from './expression-evaluator.js'
import type { ExpressionValue } from './expression-parser.js'
import { evaluateValue, substituteTemplate } from './expression-template.js'
import type { GithubJob, GithubStep, GithubWorkflow } from './github-workflow-schema.js'
import type { FileCommands } from './file-commands.js'
import { putTarInVm } from './guest-tar.js'
import { readFileCommands } from './read-file-commands.js'
import { buildStepCommand, isCheckout } from './step-shell.js'

/**
 * One step of a job cell: its `${{ }}` substituted (name, env, run, working-directory, timeout,
 * continue-on-error), then run on the cell's VM — a `run:` through its shell, `actions/checkout`
 * as a tar of the repository unpacked into the workspace, any other action skipped with a note.
 * After a `run:` step, what it wrote to GITHUB_ENV, GITHUB_OUTPUT, GITHUB_PATH and GITHUB_STEP_SUMMARY is read back.
 */

/** `steps.<id>.outcome` (before continue-on-error) and `.conclusion` (after). */
export type StepOutcome = 'success' | 'failure' | 'cancelled' | 'skipped'

export interface GithubStepResult extends StepResult {
  /** The step's `id:`. */
  id?: string
  outcome: StepOutcome
  /** Why a step did not run as written (another action's `uses:`). */
  note?: string
  /** What the step wrote to GITHUB_STEP_SUMMARY (Markdown), when it wrote anything. */
  summary?: string
}

export interface StepRunContext {
  workflow: GithubWorkflow
  job: GithubJob
  vm: Vm
  /** Contexts for `${{ }}`, `env` being the workflow's and job's env already substituted. */
  scope: EvaluationScope
  /** `GITHUB_*`, `RUNNER_*`, `CI`: under every step's env. */
  baseEnv: Record<string, string>
  workspace: string
  /** The repository as a tar, made once per run. */
  checkout: () => Promise<Buffer>
  /** Multiplies every timeout (`VM_POOL_TIMEOUT_SCALE`). */
  scale: number
  /** Milliseconds left of the job's `timeout-minutes`. */
  remainingMs: number
  /** Kill a running command (Ctrl-C, a fail-fast cancel); absent for steps run after a cancel. */
  signal?: AbortSignal
  /** A cap on this step's timeout (after a cancel). */
  capMs?: number
  /** GITHUB_PATH directories so far, the most recently added first: put before the guest's PATH. */
  pathPrefix?: readonly string[]
  /** Where GITHUB_ENV and friends are, and who takes what a `run:` step wrote to them. */
  fileCommands?: FileCommandsChannel
}

export interface FileCommandsChannel {
  /** The VM directory holding `env`, `output`, `path` and `summary`. */
  dir: string
  apply: (commands: FileCommands) => void
}

/** GitHub's default step name: `Run <first line>` / `Run <action>`. */
export function defaultStepName(step: GithubStep): string {
  const first = (step.run ?? step.uses ?? '').trim().split('\n', 1)[0] ?? ''
  return `Run ${first.length > 60 ? `${first.slice(0, 59)}…` : first}`
}

export function stepName(step: GithubStep, scope: EvaluationScope): string {
  if (step.name === undefined) return defaultStepName(step)
  try {
    return substituteTemplate(step.name, scope)
  } catch {
    return step.name
  }
}

export function skippedStep(step: GithubStep, name: string, vm: string, note?: string): GithubStepResult {
  const result: GithubStepResult = { phase: 'step', name, command: step.run ?? step.uses ?? '', exitCode: NO_EXIT_CODE, stdout: '', stderr: '', durationMs: 0, vm, skipped: true, outcome: 'skipped' }
  if (step.id !== undefined) result.id = step.id
  if (note !== undefined) result.note = note
  return result
}

export async function runGithubStep(step: GithubStep, name: string, context: StepRunContext): Promise<GithubStepResult> {
  const { vm, scope } = context
  const started = performance.now()
  const base = { phase: 'step' as const, name, vm: vm.name, ...(step.id !== undefined ? { id: step.id } : {}) }
  if (step.uses !== undefined && !isCheckout(step.uses)) {
    return skippedStep(step, name, vm.name, `${step.uses} is not run by vm-pool (only actions/checkout is)`)
  }
  let command = step.uses ?? step.run!
  let continueOnError = false
  // Set once a `run:` command went to the VM: from then on it may have written file commands.
  let ran = false
  let result: GithubStepResult
  try {
    const env = { ...context.baseEnv, ...(scope.contexts.env as Record<string, string>) }
    for (const [key, value] of Object.entries(step.env)) env[key] = substituteTemplate(value, { ...scope, contexts: { ...scope.contexts, env } })
    const stepScope: EvaluationScope = { ...scope, contexts: { ...scope.contexts, env } }
    const timeoutMs = stepTimeoutMs(step, stepScope, context)
    const workingDirectory = step.workingDirectory ?? context.job.defaults.workingDirectory ?? context.workflow.defaults.workingDirectory
    const cwd = workingDirectory === undefined ? context.workspace : inWorkspace(context.workspace, substituteTemplate(workingDirectory, stepScope))
    continueOnError = step.continueOnError === true || (typeof step.continueOnError === 'string' && truthy(evaluateValue(step.continueOnError, stepScope)))
    let exec
    if (step.uses !== undefined) {
      const path = step.with.path === undefined ? '.' : substituteTemplate(step.with.path, stepScope)
      const tar = await context.checkout()
      exec = await putTarInVm(vm, tar, inWorkspace(context.workspace, path), { timeoutMs, ...(context.signal ? { signal: context.signal } : {}) })
    } else {
      command = substituteTemplate(step.run!, stepScope)
      const shell = step.shell ?? context.job.defaults.shell ?? context.workflow.defaults.shell
      ran = true
      exec = await vm.exec(buildStepCommand(command, shell, context.pathPrefix), { cwd, env, timeoutMs, ...(context.signal ? { signal: context.signal } : {}) })
    }
    result = { ...base, command, exitCode: exec.exitCode, stdout: exec.stdout, stderr: exec.stderr, durationMs: exec.durationMs, outcome: exec.exitCode === 0 ? 'success' : 'failure' }
    if (exec.timedOut) result.timedOut = true
  } catch (error) {
    // The VM went away, the run was cancelled, or an expression failed at run time: recorded, and the
    // job goes on to its always() steps instead of unwinding past them. continue-on-error covers what
    // a command did, not a step that could not run: that still fails the job.
    continueOnError = false
    const outcome: StepOutcome = context.signal?.aborted ? 'cancelled' : 'failure'
    result = { ...base, command, exitCode: NO_EXIT_CODE, stdout: '', stderr: '', durationMs: Math.round(performance.now() - started), error: toStepError(error, step), outcome }
  }
  if (ran && context.fileCommands) await applyFileCommands(result, context, context.fileCommands)
  if (result.outcome === 'failure' && continueOnError) result.continuedOnError = true
  return result
}

/**
 * GitHub processes the file commands of every step that ran, failed ones too. A read-back that fails
 * (the VM is gone, a malformed line) fails the step, keeping its own exit code and output; a step that
 * already has an error keeps that one, the first cause.
 */
async function applyFileCommands(result: GithubStepResult, context: StepRunContext, fileCommands: FileCommandsChannel): Promise<void> {
  const aborted = context.signal?.aborted === true
  try {
    // After a cancel the read-back runs without the signal (it would stop at once), briefly, like always() steps.
    const commands = await readFileCommands(context.vm, fileCommands.dir, {
      scale: context.scale,
      ...(aborted ? { capMs: scaleTimeoutBy(ABORTED_CLEANUP_TIMEOUT_MS, context.scale) } : context.signal ? { signal: context.signal } : {}),
    })
    fileCommands.apply(commands)
    if (commands.summary.trim() !== '') result.summary = commands.summary
  } catch (error) {
    if (result.error) return
    result.error = isVmPoolError(error) ? { code: error.code, message: error.message } : { code: 'VMPOOL_WORKFLOW_INVALID', message: `${result.name}: ${(error as Error)?.message ?? String(error)}` }
    result.outcome = context.signal?.aborted ? 'cancelled' : 'failure'
  }
}

function stepTimeoutMs(step: GithubStep, scope: EvaluationScope, context: StepRunContext): number {
  let minutes: number | undefined
  if (typeof step.timeoutMinutes === 'number') minutes = step.timeoutMinutes
  else if (typeof step.timeoutMinutes === 'string') {
    const value = Number(evaluateValue(step.timeoutMinutes, scope))
    if (!(value > 0)) throw new Error(`timeout-minutes: expected a positive number, got ${JSON.stringify(evaluateValue(step.timeoutMinutes, scope))}`)
    minutes = value
  }
  let ms = scaleTimeoutBy(minutes !== undefined ? minutes * 60_000 : DEFAULT_STEP_TIMEOUT_MS, context.scale)
  ms = Math.min(ms, Math.max(1, context.remainingMs))
  return context.capMs === undefined ? ms : Math.min(ms, context.capMs)
}

/** A path of the workspace: relative ones start there, as on GitHub; `..` may not leave it. */
function inWorkspace(workspace: string, path: string): string {
  if (path.startsWith('/')) return path
  const parts: string[] = []
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue
    if (part === '..') {
      if (parts.length === 0) throw new Error(`the path ${JSON.stringify(path)} leaves the workspace`)
      parts.pop()
    } else parts.push(part)
  }
  return parts.length === 0 ? workspace : `${workspace}/${parts.join('/')}`
}

function truthy(value: ExpressionValue): boolean {
  return value === true || (typeof value === 'string' && value.toLowerCase() === 'true') || (typeof value === 'number' && value !== 0)
}

function toStepError(error: unknown, step: GithubStep): StepError {
  if (isVmPoolError(error)) return { code: error.code, message: error.message }
  return { code: 'VMPOOL_WORKFLOW_INVALID', message: `${step.where}: ${(error as Error)?.message ?? String(error)}` }
}
