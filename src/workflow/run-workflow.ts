import { z } from 'zod'
import { invalidOptions, isVmPoolError } from '../errors.js'
import { formatZodError } from '../config/zod-error.js'
import { createDebug } from '../util/debug.js'
import { getTimeoutScale, scaleTimeoutBy } from '../util/timeouts.js'
import type { KeptVmHelp, Vm, VmProvider, VmRecord } from '../providers/vm-provider.js'
import type { SessionManager, WorkflowSession } from './session-manager.js'
import type { Workflow, WorkflowPhase, WorkflowStep } from './workflow-schema.js'

const debug = createDebug('vm-pool:workflow')

/** A command without `timeout-seconds` is killed after one hour (scaled by `VM_POOL_TIMEOUT_SCALE`): a hung step must not hold a VM forever. */
export const DEFAULT_STEP_TIMEOUT_MS = 60 * 60_000

/**
 * After an abort (Ctrl-C) cleanup still runs, but each cleanup command gets at most this long (scaled),
 * so an interrupted run ends promptly and deletes its VM.
 */
export const ABORTED_CLEANUP_TIMEOUT_MS = 60_000

/**
 * Bytes of stdout and of stderr (each) a `StepResult` keeps: the first and the last half of it (the
 * middle is counted in `stdoutDroppedBytes` / `stderrDroppedBytes`), so a step printing gigabytes
 * costs a run no more memory than one printing a page. `onOutput` sees all of it.
 */
export const STEP_OUTPUT_MAX_BYTES = 1024 * 1024

/** `exitCode` of a command that produced none: it was skipped, or exec itself failed. */
export const NO_EXIT_CODE = -1

export interface StepError {
  /** A `VmPoolError` code, e.g. `VMPOOL_EXEC_FAILED`, `VMPOOL_EXEC_ABORTED`; `VMPOOL_INTERNAL` otherwise. */
  code: string
  message: string
}

/** What happened to one command of a workflow. */
export interface StepResult {
  phase: WorkflowPhase
  name: string
  /** The `run` line. */
  command: string
  /** `NO_EXIT_CODE` (-1) when skipped or when exec failed; 124 after a timeout. */
  exitCode: number
  /** Head and tail when it printed more than STEP_OUTPUT_MAX_BYTES (see `stdoutDroppedBytes`). */
  stdout: string
  stderr: string
  /** Bytes from the middle of stdout that are not in `stdout` (more than STEP_OUTPUT_MAX_BYTES printed). */
  stdoutDroppedBytes?: number
  /** Bytes from the middle of stderr that are not in `stderr`. */
  stderrDroppedBytes?: number
  durationMs: number
  /** The VM it ran on (for a skipped command: the VM it would have run on). */
  vm: string
  /** Not run, because an earlier setup command or step failed, or the run was aborted. */
  skipped?: boolean
  /** Why it was skipped when that is not "an earlier command failed" (e.g. cleanup under `keepVm`). */
  note?: string
  /** Killed by `timeout-seconds` (or `DEFAULT_STEP_TIMEOUT_MS`). */
  timedOut?: boolean
  /** Failed, but `continue-on-error` was set: it neither failed the workflow nor skipped the rest. */
  continuedOnError?: boolean
  /** exec itself failed (VM unreachable, aborted): no exit code. */
  error?: StepError
}

/** The note on each cleanup command `keepVm` skipped. */
export const KEEP_VM_CLEANUP_NOTE = 'not run: --keep-vm keeps the VM as the steps left it'

/** How to reach a VM left running by `keepVm`, and how to delete it. */
export interface KeptVm {
  name: string
  provider: string
  /** Enough to `provider.connect(record)` from any process. */
  record: VmRecord
  /** A command (or instruction) to get a shell in it. */
  reach: string
  /** A command (or instruction) that deletes this VM and no other. */
  remove: string
}

export interface WorkflowResult {
  name: string
  /** The file it was loaded from, if any. */
  source?: string
  status: 'success' | 'failure'
  /** The one VM every command ran on. */
  vm: string
  durationMs: number
  /** Setup, steps, cleanup, in order, including skipped ones. */
  steps: StepResult[]
  /** The run was aborted through `signal`: the rest was skipped, cleanup ran, the VM was released. */
  aborted?: boolean
  /** Set with `keepVm`. */
  keptVm?: KeptVm
  /** Releasing (deleting) the VM failed: it may be left behind. */
  releaseError?: StepError
}

export type WorkflowEvent =
  | { type: 'session-open'; workflow: string; vm: string; durationMs: number }
  | { type: 'command-start'; workflow: string; vm: string; phase: WorkflowPhase; name: string; command: string }
  | { type: 'command-end'; workflow: string; vm: string; result: StepResult }
  | { type: 'session-release'; workflow: string; vm: string; kept: boolean; error?: StepError }

export interface RunWorkflowOptions {
  /** Where the workflow's one VM comes from, under its concurrency limit. */
  sessions: SessionManager
  /** Leave the VM running afterwards (debug mode), as the steps left it: cleanup is skipped; `result.keptVm` says how to reach and delete it. @default false */
  keepVm?: boolean
  /** Called as the run progresses (the CLI prints one line per `command-end`). A throwing listener is ignored. */
  onEvent?: (event: WorkflowEvent) => void
  /** Aborting kills the running command, skips the rest, still runs cleanup, and releases the VM. */
  signal?: AbortSignal
  /** Every chunk a command prints, as it comes (also what STEP_OUTPUT_MAX_BYTES drops from the result). A throwing listener is ignored. */
  onOutput?: (output: CommandOutput) => void
}

/** A chunk of a command's output, for `RunWorkflowOptions.onOutput`. */
export interface CommandOutput {
  workflow: string
  vm: string
  phase: WorkflowPhase
  name: string
  stream: 'stdout' | 'stderr'
  chunk: string
}

const runWorkflowOptionsSchema = z
  .object({
    sessions: z.custom<SessionManager>((value) => typeof (value as SessionManager | undefined)?.openSession === 'function', {
      error: 'expected a SessionManager',
    }),
    keepVm: z.boolean().default(false),
    onEvent: z.custom<(event: WorkflowEvent) => void>((value) => typeof value === 'function', { error: 'expected a function' }).optional(),
    signal: z.custom<AbortSignal>((value) => value instanceof AbortSignal, { error: 'expected an AbortSignal' }).optional(),
    onOutput: z.custom<(output: CommandOutput) => void>((value) => typeof value === 'function', { error: 'expected a function' }).optional(),
  })
  .strict()

/**
 * Run a workflow on exactly one VM: open a session (its VM is created before the first command), run
 * setup, steps, then cleanup on that VM, release the session. A failed setup command or step skips the
 * rest (marked `skipped`) but cleanup ALWAYS runs — after a failure, after exec throws, after an abort —
 * except with `keepVm`: then the VM is kept as the steps left it and cleanup is skipped (with a `note`).
 * Resolves with a `WorkflowResult` whatever the commands do; rejects only when no VM could be had
 * (`VMPOOL_SESSION_LIMIT`, `VMPOOL_QUEUE_TIMEOUT`, `VMPOOL_CREATE_FAILED`, `VMPOOL_ABORTED`, …).
 */
export async function runWorkflow(workflow: Workflow, options: RunWorkflowOptions): Promise<WorkflowResult> {
  const parsed = runWorkflowOptionsSchema.safeParse(options)
  if (!parsed.success) throw invalidOptions(`invalid runWorkflow options: ${formatZodError(parsed.error, options)}`, { operation: 'run-workflow' })
  assertWorkflow(workflow)
  const { sessions, keepVm, onEvent, signal, onOutput } = parsed.data
  // Read now so a bad VM_POOL_TIMEOUT_SCALE fails before a VM exists.
  const scale = getTimeoutScale()
  const emit = (event: WorkflowEvent) => {
    try {
      onEvent?.(event)
    } catch (error) {
      debug('onEvent listener threw, ignored: %s', (error as Error)?.message)
    }
  }

  const started = performance.now()
  // The workflow's `vm:` block, over the session manager's spec.
  const session = await sessions.openSession({ ...(signal ? { signal } : {}), ...(workflow.vm ? { spec: workflow.vm } : {}) })
  const vm = session.vm
  emit({ type: 'session-open', workflow: workflow.name, vm: vm.name, durationMs: Math.round(performance.now() - started) })

  const steps: StepResult[] = []
  let failed = false
  const record = (result: StepResult, step: WorkflowStep, phase: WorkflowPhase) => {
    if (!result.skipped && !succeeded(result)) {
      if (step.continueOnError) result.continuedOnError = true
      else failed = true
    }
    steps.push(result)
    emit({ type: 'command-end', workflow: workflow.name, vm: vm.name, result })
    debug('%s %s %s: exit %d', workflow.name, phase, step.name, result.exitCode)
  }

  let releaseError: StepError | undefined
  try {
    for (const [phase, list] of [['setup', workflow.setup], ['step', workflow.steps]] as const) {
      for (const step of list) {
        if (failed || signal?.aborted) record(skippedResult(phase, step, vm.name), step, phase)
        else record(await runCommand(workflow, vm, phase, step, { scale, signal, emit, onOutput }), step, phase)
      }
    }
  } finally {
    // Cleanup always runs, on the same VM. It is not given the run's signal (that would kill it at
    // once after Ctrl-C); after an abort each command is capped instead.
    const capMs = signal?.aborted ? scaleTimeoutBy(ABORTED_CLEANUP_TIMEOUT_MS, scale) : undefined
    for (const step of workflow.cleanup) {
      // keepVm keeps the VM to be looked at: as the steps (or the failure) left it, so cleanup does not run.
      if (keepVm) record({ ...skippedResult('cleanup', step, vm.name), note: KEEP_VM_CLEANUP_NOTE }, step, 'cleanup')
      else record(await runCommand(workflow, vm, 'cleanup', step, { scale, emit, capMs, onOutput }), step, 'cleanup')
    }
    releaseError = await releaseSession(session, keepVm)
    emit({ type: 'session-release', workflow: workflow.name, vm: vm.name, kept: keepVm, ...(releaseError ? { error: releaseError } : {}) })
  }

  const aborted = signal?.aborted === true
  const result: WorkflowResult = {
    name: workflow.name,
    status: failed || aborted || releaseError ? 'failure' : 'success',
    vm: vm.name,
    durationMs: Math.round(performance.now() - started),
    steps,
  }
  if (workflow.source !== undefined) result.source = workflow.source
  if (aborted) result.aborted = true
  if (keepVm && !releaseError) result.keptVm = describeKeptVm(vm, sessions.provider)
  if (releaseError) result.releaseError = releaseError
  return result
}

/** A command counts as successful when it exited 0. */
export function succeeded(result: StepResult): boolean {
  return !result.skipped && result.error === undefined && result.exitCode === 0
}

interface RunCommandContext {
  scale: number
  signal?: AbortSignal | undefined
  emit: (event: WorkflowEvent) => void
  capMs?: number | undefined
  onOutput?: ((output: CommandOutput) => void) | undefined
}

async function runCommand(workflow: Workflow, vm: Vm, phase: WorkflowPhase, step: WorkflowStep, context: RunCommandContext): Promise<StepResult> {
  context.emit({ type: 'command-start', workflow: workflow.name, vm: vm.name, phase, name: step.name, command: step.run })
  const env = { ...workflow.env, ...step.env }
  let timeoutMs = scaleTimeoutBy(step.timeoutSeconds !== undefined ? step.timeoutSeconds * 1000 : DEFAULT_STEP_TIMEOUT_MS, context.scale)
  if (context.capMs !== undefined) timeoutMs = Math.min(timeoutMs, context.capMs)
  const started = performance.now()
  const base = { phase, name: step.name, command: step.run, vm: vm.name }
  const { onOutput } = context
  const forward = (stream: 'stdout' | 'stderr') => (chunk: string) => {
    try {
      onOutput?.({ workflow: workflow.name, vm: vm.name, phase, name: step.name, stream, chunk })
    } catch (error) {
      debug('onOutput listener threw, ignored: %s', (error as Error)?.message)
    }
  }
  try {
    const exec = await vm.exec(step.run, {
      ...(step.workingDirectory !== undefined ? { cwd: step.workingDirectory } : {}),
      ...(Object.keys(env).length > 0 ? { env } : {}),
      timeoutMs,
      ...(context.signal ? { signal: context.signal } : {}),
      maxOutputBytes: STEP_OUTPUT_MAX_BYTES,
      ...(onOutput ? { onStdout: forward('stdout'), onStderr: forward('stderr') } : {}),
    })
    const result: StepResult = { ...base, exitCode: exec.exitCode, stdout: exec.stdout, stderr: exec.stderr, durationMs: exec.durationMs }
    if (exec.stdoutDroppedBytes) result.stdoutDroppedBytes = exec.stdoutDroppedBytes
    if (exec.stderrDroppedBytes) result.stderrDroppedBytes = exec.stderrDroppedBytes
    if (exec.timedOut) result.timedOut = true
    return result
  } catch (error) {
    // exec itself failed (the VM went away, the transport broke, the run was aborted): record it and
    // carry on to cleanup instead of unwinding past it.
    return {
      ...base,
      exitCode: NO_EXIT_CODE,
      stdout: '',
      stderr: '',
      durationMs: Math.round(performance.now() - started),
      error: toStepError(error),
    }
  }
}

function skippedResult(phase: WorkflowPhase, step: WorkflowStep, vm: string): StepResult {
  return { phase, name: step.name, command: step.run, exitCode: NO_EXIT_CODE, stdout: '', stderr: '', durationMs: 0, vm, skipped: true }
}

async function releaseSession(session: WorkflowSession, keepVm: boolean): Promise<StepError | undefined> {
  try {
    await session.release({ keepVm })
    return undefined
  } catch (error) {
    return toStepError(error)
  }
}

function toStepError(error: unknown): StepError {
  if (isVmPoolError(error)) return { code: error.code, message: error.message }
  return { code: 'VMPOOL_INTERNAL', message: (error as Error)?.message ?? String(error) }
}

/** The provider says how to reach and delete its VM (`VmProvider.describe`); a generic answer otherwise. */
function describeKeptVm(vm: Vm, provider: VmProvider): KeptVm {
  const { name, record } = vm
  const help: KeptVmHelp = provider.describe?.(record) ?? {
    reach: `vm-pool ls --provider ${vm.provider} shows it; from code: provider.connect(result.keptVm.record)`,
    // Only this VM: `vm-pool gc` would delete every other orphaned VM too (a kept VM has no lease, and
    // `--prefix` only adds prefixes), so it is offered as the second choice, saying so.
    remove: `from code: provider.delete('${name}'); or vm-pool gc --provider ${vm.provider}, which deletes every orphaned VM, this one included`,
  }
  return { name, provider: vm.provider, record, reach: help.reach, remove: help.remove }
}

function assertWorkflow(workflow: Workflow): void {
  const ok =
    typeof workflow === 'object' &&
    workflow !== null &&
    typeof workflow.name === 'string' &&
    [workflow.setup, workflow.steps, workflow.cleanup].every(Array.isArray) &&
    typeof workflow.env === 'object'
  if (!ok) {
    throw invalidOptions('runWorkflow expects a parsed workflow', {
      operation: 'run-workflow',
      hint: 'get one from parseWorkflow(yamlText), loadWorkflow(path) or defineWorkflow({ name, steps: [{ run }] })',
    })
  }
}
