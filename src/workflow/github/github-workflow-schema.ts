import { z } from 'zod'
import type { MatrixInput } from './matrix.js'

/**
 * The subset of GitHub Actions workflow syntax vm-pool runs (docs/workflows.md, "GitHub Actions files").
 * Objects are strict: a key GitHub does not know is an error naming its path; keys GitHub knows but
 * vm-pool cannot honour are listed in UNSUPPORTED_JOB_KEYS (an error) or IGNORED_* (accepted, and
 * warned about where it changes what runs). Expressions are checked by load-github-workflow.ts.
 */

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
export const JOB_ID = /^[A-Za-z_][A-Za-z0-9_-]*$/

const text = z.union([z.string(), z.number(), z.boolean()], { error: 'expected a string' }).transform((value) => String(value))
const nonEmpty = (what: string) => z.string({ error: `expected a string` }).min(1, { error: `${what} must not be empty` })
const expression = z.string().regex(/\$\{\{[\s\S]*\}\}/, { error: 'expected a value or a ${{ }} expression' })
const condition = z.union([z.string(), z.boolean(), z.number()], { error: 'expected a condition (an expression, true or false)' })
const boolOrExpression = z.union([z.boolean(), expression], { error: 'expected true, false or a ${{ }} expression' })
const minutes = z.union([z.number().positive({ error: 'expected a positive number of minutes' }), expression], { error: 'expected a number of minutes or a ${{ }} expression' })
const stringList = z.union([z.string(), z.array(z.string())], { error: 'expected a string or a list of strings' }).transform((value) => (Array.isArray(value) ? value : [value]))

const envSchema = z.record(
  z.string().regex(ENV_NAME, { error: 'invalid environment variable name: use letters, digits and _, not starting with a digit' }),
  text,
  { error: 'expected a mapping of NAME: value (an env from a ${{ }} expression is not supported)' },
)

const runDefaultsSchema = z
  .object({ shell: nonEmpty('shell').optional(), 'working-directory': nonEmpty('working-directory').optional() }, { error: 'expected a mapping' })
  .strict()
const defaultsSchema = z.object({ run: runDefaultsSchema.optional() }, { error: 'expected a mapping with `run:`' }).strict()

export const githubStepSchema = z
  .object(
    {
      id: z.string().regex(JOB_ID, { error: 'expected letters, digits, - and _, starting with a letter or _' }).optional(),
      name: text.optional(),
      if: condition.optional(),
      run: nonEmpty('run').optional(),
      uses: nonEmpty('uses').optional(),
      with: z.record(z.string(), text, { error: 'expected a mapping of input: value' }).optional(),
      env: envSchema.optional(),
      shell: nonEmpty('shell').optional(),
      'working-directory': nonEmpty('working-directory').optional(),
      'continue-on-error': boolOrExpression.optional(),
      'timeout-minutes': minutes.optional(),
    },
    { error: 'expected a mapping with `run:` or `uses:`' },
  )
  .strict()
  .superRefine((step, context) => {
    if ((step.run === undefined) === (step.uses === undefined)) {
      context.addIssue({ code: 'custom', message: step.run === undefined ? 'a step needs `run:` or `uses:`' : 'a step has either `run:` or `uses:`, not both' })
    }
  })

const matrixSchema = z.record(z.string(), z.unknown(), { error: 'expected a mapping of lists (a matrix from a ${{ }} expression is not supported)' }).superRefine((matrix, context) => {
  for (const [key, value] of Object.entries(matrix)) {
    const isMappingList = Array.isArray(value) && value.every((entry) => typeof entry === 'object' && entry !== null && !Array.isArray(entry))
    if ((key === 'include' || key === 'exclude') && !isMappingList) {
      context.addIssue({ code: 'custom', path: [key], message: `expected a list of mappings (key: value)` })
    } else if (key !== 'include' && key !== 'exclude' && (!Array.isArray(value) || value.length === 0)) {
      context.addIssue({ code: 'custom', path: [key], message: typeof value === 'string' && value.includes('${{') ? 'a matrix list from a ${{ }} expression is not supported: list the values' : 'expected a non-empty list of values' })
    }
  }
})

const strategySchema = z
  .object(
    {
      matrix: matrixSchema.optional(),
      'fail-fast': boolOrExpression.optional(),
      'max-parallel': z.union([z.number().int().positive({ error: 'expected a whole number of at least 1' }), expression]).optional(),
    },
    { error: 'expected a mapping with `matrix:`' },
  )
  .strict()

const runsOnSchema = z.union(
  [
    z.string().min(1),
    z.array(z.string().min(1)).min(1),
    z.object({ group: z.string().optional(), labels: stringList.optional() }).strict(),
  ],
  { error: 'expected a label, a list of labels, or { group, labels }' },
)

/** Keys GitHub knows on a job that vm-pool cannot honour: each is an error naming it. */
export const UNSUPPORTED_JOB_KEYS: Record<string, string> = {
  container: 'vm-pool runs each job directly on its own VM, not in a container',
  services: 'service containers are not started: run the service in a step instead',
  uses: 'reusable workflows (jobs.<id>.uses) are not supported',
  with: 'reusable workflows (jobs.<id>.with) are not supported',
  secrets: 'reusable workflows (jobs.<id>.secrets) are not supported',
}

/** Keys accepted and ignored, with the warning printed when they are present (none: silently). */
export const IGNORED_JOB_KEYS: Record<string, string | undefined> = {
  permissions: undefined,
  concurrency: undefined,
  environment: 'deployment environments are not used',
}

export const githubJobSchema = z
  .object(
    {
      name: text.optional(),
      needs: z.union([z.string().regex(JOB_ID), z.array(z.string().regex(JOB_ID))], { error: 'expected a job id or a list of job ids' }).optional(),
      if: condition.optional(),
      'runs-on': runsOnSchema.optional(),
      env: envSchema.optional(),
      defaults: defaultsSchema.optional(),
      'timeout-minutes': minutes.optional(),
      'continue-on-error': boolOrExpression.optional(),
      strategy: strategySchema.optional(),
      outputs: z.record(z.string().regex(JOB_ID, { error: 'invalid output name: use letters, digits, - and _, starting with a letter or _' }), text, {
        error: 'expected a mapping of name: value (usually ${{ steps.<id>.outputs.<name> }})',
      }).optional(),
      steps: z.array(githubStepSchema, { error: 'expected a list of steps (- run: ...)' }).min(1, { error: 'a job needs at least one step' }),
      // Known to GitHub; checked against UNSUPPORTED_JOB_KEYS / IGNORED_JOB_KEYS by the loader.
      container: z.unknown().optional(),
      services: z.unknown().optional(),
      uses: z.unknown().optional(),
      with: z.unknown().optional(),
      secrets: z.unknown().optional(),
      permissions: z.unknown().optional(),
      concurrency: z.unknown().optional(),
      environment: z.unknown().optional(),
    },
    { error: 'expected a mapping with `runs-on` and `steps`' },
  )
  .strict()

/** A push / pull_request trigger's filters. `paths` filters are accepted but not evaluated (serve warns). */
const eventFilterSchema = z
  .object(
    {
      branches: stringList.optional(),
      'branches-ignore': stringList.optional(),
      tags: stringList.optional(),
      'tags-ignore': stringList.optional(),
      paths: stringList.optional(),
      'paths-ignore': stringList.optional(),
      types: stringList.optional(),
    },
    { error: 'expected a mapping of filters (branches, tags, types, ...)' },
  )
  .strict()
  .nullable()

const onSchema = z.union(
  [
    z.string().min(1),
    z.array(z.string().min(1)),
    z.looseObject({ push: eventFilterSchema.optional(), pull_request: eventFilterSchema.optional() }),
  ],
  { error: 'expected an event, a list of events, or a mapping of events' },
)

export const githubWorkflowInputSchema = z
  .object(
    {
      name: text.optional(),
      'run-name': z.unknown().optional(),
      on: onSchema.optional(),
      env: envSchema.optional(),
      defaults: defaultsSchema.optional(),
      permissions: z.unknown().optional(),
      concurrency: z.unknown().optional(),
      jobs: z.record(z.string().regex(JOB_ID, { error: 'invalid job id: use letters, digits, - and _, starting with a letter or _' }), githubJobSchema, { error: 'expected a mapping of jobs' }),
    },
    { error: 'expected a mapping with `on` and `jobs`' },
  )
  .strict()

export type GithubWorkflowInput = z.output<typeof githubWorkflowInputSchema>
export type GithubJobInput = z.output<typeof githubJobSchema>
export type GithubStepInput = z.output<typeof githubStepSchema>

/** Keys allowed at each level, for "unknown key (did you mean …?)" messages. */
export const ALLOWED_KEYS = {
  workflow: Object.keys(githubWorkflowInputSchema.shape),
  // Keys that are always an error are not offered.
  job: Object.keys(githubJobSchema.shape).filter((key) => !(key in UNSUPPORTED_JOB_KEYS)),
  step: ['id', 'name', 'if', 'run', 'uses', 'with', 'env', 'shell', 'working-directory', 'continue-on-error', 'timeout-minutes'],
  strategy: Object.keys(strategySchema.shape),
  defaults: ['run'],
  run: ['shell', 'working-directory'],
  event: ['branches', 'branches-ignore', 'tags', 'tags-ignore', 'paths', 'paths-ignore', 'types'],
  runsOn: ['group', 'labels'],
}

export interface RunDefaults {
  shell?: string
  workingDirectory?: string
}

/** One step, normalized. Strings may hold `${{ }}`: they are substituted when the step runs. */
export interface GithubStep {
  /** 0-based position in its job. */
  index: number
  id?: string
  name?: string
  if?: string | boolean | number
  run?: string
  uses?: string
  with: Record<string, string>
  env: Record<string, string>
  shell?: string
  workingDirectory?: string
  continueOnError: boolean | string
  timeoutMinutes?: number | string
  /** `file:line:col` of the step, for messages. */
  where: string
}

export interface GithubJob {
  id: string
  name?: string
  needs: string[]
  if?: string | boolean | number
  /** Labels; may hold `${{ matrix.* }}`. Empty: the provider's default VM. */
  runsOn: string[]
  env: Record<string, string>
  defaults: RunDefaults
  timeoutMinutes?: number | string
  continueOnError: boolean | string
  matrix?: MatrixInput
  failFast: boolean | string
  maxParallel?: number | string
  /** `outputs:`: name → value, substituted at the end of each cell; `{}` when there are none. */
  outputs: Record<string, string>
  steps: GithubStep[]
  where: string
}

/** Which events start the workflow, each with its filters (`{}`: any branch). */
export interface EventFilter {
  branches?: string[]
  branchesIgnore?: string[]
  tags?: string[]
  tagsIgnore?: string[]
  types?: string[]
}

/** A GitHub Actions workflow file, validated and normalized: what `runGithubWorkflow` runs. */
export interface GithubWorkflow {
  kind: 'github'
  name: string
  source?: string
  triggers: Record<string, EventFilter>
  env: Record<string, string>
  defaults: RunDefaults
  /** In file order. */
  jobs: GithubJob[]
  /** Things accepted but not done (another action's `uses:`, ignored keys), with their location. */
  warnings: string[]
}
