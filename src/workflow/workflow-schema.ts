import { z } from 'zod'
import type { VmSpec } from '../providers/vm-provider.js'
import { vmBlockSchema, vmBlockToSpec } from './vm-block.js'

/**
 * The workflow file format (DESIGN.md, seeds 000/002/004): `name`, `env`, `setup`, `steps`, `cleanup`.
 * Keys are spelled as users write them in YAML (`working-directory`, `timeout-seconds`); the parsed
 * `Workflow` is normalized to camelCase with every default filled in, so the executor never sees raw input.
 * Objects are strict: a misspelled key is an error naming its path, not a silently ignored setting.
 */

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/

/**
 * The longest `timeout-seconds` accepted: 7 days. Node timers overflow past about 24.8 days and then
 * fire at once, which would turn a huge timeout into an instant one.
 */
export const MAX_STEP_TIMEOUT_SECONDS = 7 * 24 * 60 * 60

const POSITIVE_NUMBER = 'expected a positive number'

// YAML turns `CI: 1` and `DEBUG: true` into a number and a boolean; environment values are strings.
const envValueSchema = z
  .union([z.string(), z.number(), z.boolean()], { error: 'expected a string, number or boolean value' })
  .transform((value) => String(value))

const envSchema = z.record(
  z.string().regex(ENV_NAME, { error: 'invalid environment variable name: use letters, digits and _, not starting with a digit' }),
  envValueSchema,
  { error: 'expected a mapping of NAME: value' },
)

const nonEmptyString = (what: string) =>
  z.string({ error: (issue) => (issue.input === undefined ? `${what} is required` : `expected a string`) }).min(1, { error: `${what} must not be empty` })

export const workflowCommandSchema = z
  .object(
    {
      name: nonEmptyString('name').optional(),
      run: nonEmptyString('run'),
      'working-directory': nonEmptyString('working-directory').optional(),
      'continue-on-error': z.boolean({ error: 'expected true or false' }).optional(),
      'timeout-seconds': z
        .number({ error: POSITIVE_NUMBER })
        .positive({ error: POSITIVE_NUMBER })
        .max(MAX_STEP_TIMEOUT_SECONDS, { error: `expected at most ${MAX_STEP_TIMEOUT_SECONDS} (7 days)` })
        .optional(),
      env: envSchema.optional(),
    },
    { error: 'expected a mapping with at least `run: <command>`' },
  )
  .strict()

const commandListSchema = z.array(workflowCommandSchema, {
  error: (issue) => (issue.input === undefined ? 'required: a list of commands (- run: ...)' : 'expected a list of commands (- run: ...)'),
})

/** The YAML document as written (kebab-case keys). */
export const workflowInputSchema = z
  .object(
    {
      name: nonEmptyString('name').optional(),
      /** The workflow's VM: `image`, `cpus`, `memory-mib`, `disk-gib` (the provider's defaults for what is left out). */
      vm: vmBlockSchema.optional(),
      env: envSchema.optional(),
      setup: commandListSchema.optional(),
      steps: commandListSchema.min(1, { error: 'a workflow needs at least one step' }),
      cleanup: commandListSchema.optional(),
    },
    { error: (issue) => (issue.input === undefined || issue.input === null ? 'the workflow is empty: expected a mapping with `name` and `steps`' : 'expected a mapping with `name` and `steps`') },
  )
  .strict()

export type WorkflowInput = z.input<typeof workflowInputSchema>
export type WorkflowCommandInput = z.input<typeof workflowCommandSchema>

export type WorkflowPhase = 'setup' | 'step' | 'cleanup'

/** One command of a workflow, normalized. */
export interface WorkflowStep {
  /** From `name:`, else the first line of `run` (shortened). */
  name: string
  /** A shell line, run by `sh` in the VM. */
  run: string
  /** `working-directory`: relative paths start at the VM user's home. */
  workingDirectory?: string
  /** `continue-on-error`: a failure is reported but neither skips the rest nor fails the workflow. @default false */
  continueOnError: boolean
  /** `timeout-seconds`; unset means `DEFAULT_STEP_TIMEOUT_MS`. */
  timeoutSeconds?: number
  /** The step's own `env` (merged over the workflow's when it runs). */
  env: Record<string, string>
}

/** A parsed, validated workflow: what `runWorkflow` runs. */
export interface Workflow {
  /** From `name:`, else the file name without extension, else `workflow`. */
  name: string
  /** Where it was loaded from, for messages. */
  source?: string
  /** From `vm:` (image, cpus, memory-mib, disk-gib); absent: the session manager's spec decides. */
  vm?: Omit<VmSpec, 'name' | 'labels'>
  env: Record<string, string>
  setup: WorkflowStep[]
  steps: WorkflowStep[]
  /** Always runs, also after a failed setup or step and after an abort. */
  cleanup: WorkflowStep[]
}

const DEFAULT_NAME_LENGTH = 48

function defaultStepName(run: string): string {
  const firstLine = run.trim().split('\n', 1)[0] ?? ''
  return firstLine.length > DEFAULT_NAME_LENGTH ? `${firstLine.slice(0, DEFAULT_NAME_LENGTH - 1)}…` : firstLine
}

function normalizeCommand(input: z.output<typeof workflowCommandSchema>): WorkflowStep {
  const step: WorkflowStep = {
    name: input.name ?? defaultStepName(input.run),
    run: input.run,
    continueOnError: input['continue-on-error'] ?? false,
    env: { ...input.env },
  }
  if (input['working-directory'] !== undefined) step.workingDirectory = input['working-directory']
  if (input['timeout-seconds'] !== undefined) step.timeoutSeconds = input['timeout-seconds']
  return step
}

/** Turn validated input into the frozen-shape `Workflow`; `fallbackName` is used when `name:` is absent. */
export function normalizeWorkflowInput(input: z.output<typeof workflowInputSchema>, fallbackName = 'workflow', source?: string): Workflow {
  const workflow: Workflow = {
    name: input.name ?? fallbackName,
    env: { ...input.env },
    setup: (input.setup ?? []).map(normalizeCommand),
    steps: input.steps.map(normalizeCommand),
    cleanup: (input.cleanup ?? []).map(normalizeCommand),
  }
  if (source !== undefined) workflow.source = source
  if (input.vm !== undefined) workflow.vm = vmBlockToSpec(input.vm)
  return workflow
}
