import { basename, extname } from 'node:path'
import { z } from 'zod'
import { VmPoolError } from '../../errors.js'
import { formatZodError } from '../../config/zod-error.js'
import { closest, formatPath, lineColAt, parseYamlSource, readWorkflowFile, type KeyPath, type YamlSource } from '../yaml-source.js'
import { getAllowedContexts } from './context-availability.js'
import { checkTemplate, contextsUsed } from './expression-template.js'
import type { ExpressionValue } from './expression-parser.js'
import { checkJobGraph } from './job-graph.js'
import type { MatrixCell, MatrixInput } from './matrix.js'
import { isCheckout, checkShell, CHECKOUT_INPUTS } from './step-shell.js'
import { docPath } from '../../util/docs-path.js'
import {
  ALLOWED_KEYS,
  IGNORED_JOB_KEYS,
  UNSUPPORTED_JOB_KEYS,
  githubWorkflowInputSchema,
  type EventFilter,
  type GithubJob,
  type GithubJobInput,
  type GithubStep,
  type GithubWorkflow,
  type GithubWorkflowInput,
} from './github-workflow-schema.js'

const FORMAT_HINT = `see "GitHub Actions files" in ${docPath('workflows.md')} for the keys vm-pool supports`

export interface LoadGithubWorkflowOptions {
  /** Every warning (another action's `uses:`, an ignored key) is an error instead. @default false */
  strict?: boolean
}

interface Problem {
  where: string | undefined
  text: string
}

/**
 * Parse a GitHub Actions workflow. Throws `VMPOOL_WORKFLOW_INVALID` listing every problem with its
 * `file:line:col` and key path: unknown or unsupported keys, bad `needs:`, a shell vm-pool cannot run,
 * a `${{ }}` that does not parse or names an unknown context or function.
 */
export function parseGithubWorkflow(text: string, source?: string, options: LoadGithubWorkflowOptions = {}): GithubWorkflow {
  const label = source ?? '<workflow>'
  const yaml = parseYamlSource(text, label)
  const parsed = githubWorkflowInputSchema.safeParse(yaml.data)
  if (!parsed.success) throw invalid(label, describeIssues(parsed.error, yaml))
  const problems: Problem[] = []
  const warnings: Problem[] = []
  checkWorkflow(parsed.data, yaml, problems, warnings)
  if (options.strict) problems.push(...warnings.map((warning) => ({ ...warning, text: `${warning.text} (an error with --strict)` })))
  if (problems.length > 0) throw invalid(label, problems)
  return normalize(parsed.data, yaml, label, source, warnings)
}

export async function loadGithubWorkflow(path: string, options: LoadGithubWorkflowOptions = {}): Promise<GithubWorkflow> {
  return parseGithubWorkflow(await readWorkflowFile(path), path, options)
}

function invalid(label: string, unsorted: Problem[]): VmPoolError {
  // In file order, as an editor would list them; problems without a place last.
  const position = (p: Problem) => (p.where ? p.where.split(':').map(Number) : [Infinity, Infinity]) as [number, number]
  const problems = [...unsorted].sort((a, b) => position(a)[0] - position(b)[0] || position(a)[1] - position(b)[1])
  const line = (p: Problem) => `${p.where ? `${label}:${p.where}: ` : ''}${p.text}`
  const message =
    problems.length === 1
      ? `invalid workflow ${label}${problems[0]!.where ? `:${problems[0]!.where}` : ''}: ${problems[0]!.text}`
      : `invalid workflow ${label} (${problems.length} problems):\n${problems.map((p) => `  ${line(p)}`).join('\n')}`
  return new VmPoolError({
    code: 'VMPOOL_WORKFLOW_INVALID',
    operation: 'load-workflow',
    message,
    hint: FORMAT_HINT,
    details: { source: label, problems: problems.map((p) => `${p.where ? `${p.where}: ` : ''}${p.text}`) },
  })
}

function allowedKeysAt(path: KeyPath): readonly string[] {
  const [first, , third, , fifth] = path
  if (path.length === 0) return ALLOWED_KEYS.workflow
  if (first === 'on') return ALLOWED_KEYS.event
  if (first === 'defaults') return path.length === 1 ? ALLOWED_KEYS.defaults : ALLOWED_KEYS.run
  if (path.length === 2) return ALLOWED_KEYS.job
  if (third === 'steps') return ALLOWED_KEYS.step
  if (third === 'strategy') return ALLOWED_KEYS.strategy
  if (third === 'defaults') return fifth === undefined && path.length === 3 ? ALLOWED_KEYS.defaults : ALLOWED_KEYS.run
  if (third === 'runs-on') return ALLOWED_KEYS.runsOn
  return []
}

function describeIssues(error: z.ZodError, yaml: YamlSource): Problem[] {
  const problems: Problem[] = []
  for (const issue of error.issues) {
    const path = issue.path.filter((key): key is string | number => typeof key !== 'symbol')
    if (issue.code === 'unrecognized_keys') {
      const allowed = allowedKeysAt(path)
      for (const key of issue.keys) {
        const suggestion = closest(key, allowed)
        problems.push({ where: lineColAt(yaml, path, key), text: `${formatPath([...path, key])}: unknown key${suggestion ? ` (did you mean "${suggestion}"?)` : ''}; allowed: ${allowed.join(', ')}` })
      }
    } else if (issue.code === 'invalid_key') {
      const reason = issue.issues[0]?.message ?? issue.message
      problems.push({ where: lineColAt(yaml, path.slice(0, -1), String(path.at(-1))), text: `${formatPath(path)}: ${reason}` })
    } else {
      problems.push({ where: lineColAt(yaml, path), text: formatZodError(new z.ZodError([issue])) })
    }
  }
  return problems
}

function checkWorkflow(input: GithubWorkflowInput, yaml: YamlSource, problems: Problem[], warnings: Problem[]): void {
  const at = (path: KeyPath, key?: string) => lineColAt(yaml, path, key)
  const jobs = Object.entries(input.jobs)
  if (jobs.length === 0) problems.push({ where: at(['jobs']), text: 'jobs: a workflow needs at least one job' })
  for (const [jobId, message] of checkJobGraph(jobs.map(([id, job]) => ({ id, needs: toList(job.needs) })))) {
    problems.push({ where: at(['jobs', jobId], 'needs'), text: `jobs.${jobId}.needs: ${message}` })
  }
  for (const [where, shell] of [[['defaults', 'run'], input.defaults?.run?.shell]] as const) {
    const problem = shell === undefined ? undefined : checkShell(shell)
    if (problem) problems.push({ where: at([...where], 'shell'), text: `${formatPath([...where])}.shell: ${problem}` })
  }
  for (const [id, job] of jobs) {
    const jobPath = ['jobs', id]
    for (const [key, why] of Object.entries(UNSUPPORTED_JOB_KEYS)) {
      if (job[key as keyof GithubJobInput] !== undefined) problems.push({ where: at(jobPath, key), text: `jobs.${id}.${key}: not supported: ${why}` })
    }
    for (const [key, why] of Object.entries(IGNORED_JOB_KEYS)) {
      if (why && job[key as keyof GithubJobInput] !== undefined) warnings.push({ where: at(jobPath, key), text: `jobs.${id}.${key}: ignored: ${why}` })
    }
    const shell = job.defaults?.run?.shell
    const shellProblem = shell === undefined ? undefined : checkShell(shell)
    if (shellProblem) problems.push({ where: at([...jobPath, 'defaults', 'run'], 'shell'), text: `jobs.${id}.defaults.run.shell: ${shellProblem}` })
    for (const [index, step] of job.steps.entries()) {
      const stepPath = [...jobPath, 'steps', index]
      const name = `jobs.${id}.steps[${index}]`
      if (step.shell !== undefined) {
        const problem = checkShell(step.shell)
        if (problem) problems.push({ where: at(stepPath, 'shell'), text: `${name}.shell: ${problem}` })
      }
      if (step.uses !== undefined && isCheckout(step.uses)) {
        for (const key of Object.keys(step.with ?? {}).filter((key) => !CHECKOUT_INPUTS.includes(key))) {
          warnings.push({ where: at([...stepPath, 'with'], key), text: `${name}.with.${key}: ignored: vm-pool's checkout copies the tracked files of the working tree (inputs: ${CHECKOUT_INPUTS.join(', ')})` })
        }
      } else if (step.uses !== undefined) {
        warnings.push({ where: at(stepPath, 'uses'), text: `${name}.uses: ${step.uses} is not run by vm-pool (only actions/checkout is): the step is skipped` })
      }
    }
  }
  checkExpressions(input, [], yaml, problems, warnings)
}

/** Every string of the workflow that may hold `${{ }}`: checked now, so a typo fails before a VM boots. */
function checkExpressions(value: unknown, path: KeyPath, yaml: YamlSource, problems: Problem[], warnings: Problem[]): void {
  const [first, , third] = path
  if (first === 'on' || first === 'run-name' || first === 'permissions' || first === 'concurrency') return
  if (first === 'jobs' && (third === 'strategy' || (path.length === 3 && typeof third === 'string' && third in IGNORED_JOB_KEYS))) return
  if (typeof value === 'string') {
    const isCondition = path.at(-1) === 'if'
    for (const problem of checkTemplate(value, isCondition)) problems.push({ where: lineColAt(yaml, path), text: `${formatPath(path)}: ${problem}` })
    const used = contextsUsed(value, isCondition)
    const allowed = getAllowedContexts(path)
    for (const name of used) {
      if (allowed && !allowed.includes(name)) problems.push({ where: lineColAt(yaml, path), text: `${formatPath(path)}: the ${name} context is not available here (GitHub refuses it; allowed: ${allowed.join(', ')})` })
    }
    if (used.has('secrets')) {
      warnings.push({ where: lineColAt(yaml, path), text: `${formatPath(path)}: secrets are not passed to VMs: every secrets.* is empty` })
    }
  } else if (Array.isArray(value)) {
    value.forEach((item, index) => checkExpressions(item, [...path, index], yaml, problems, warnings))
  } else if (typeof value === 'object' && value !== null) {
    for (const [key, item] of Object.entries(value)) checkExpressions(item, [...path, key], yaml, problems, warnings)
  }
}

function normalize(input: GithubWorkflowInput, yaml: YamlSource, label: string, source: string | undefined, warnings: Problem[]): GithubWorkflow {
  const where = (path: KeyPath) => `${label}:${lineColAt(yaml, path) ?? '1:1'}`
  const jobs: GithubJob[] = Object.entries(input.jobs).map(([id, job]) => {
    const steps: GithubStep[] = job.steps.map((step, index) =>
      withoutUndefined({
        index,
        id: step.id,
        name: step.name,
        if: step.if,
        run: step.run,
        uses: step.uses,
        with: { ...step.with },
        env: { ...step.env },
        shell: step.shell,
        workingDirectory: step['working-directory'],
        continueOnError: step['continue-on-error'] ?? false,
        timeoutMinutes: step['timeout-minutes'],
        where: where(['jobs', id, 'steps', index]),
      }),
    )
    const runsOn = job['runs-on']
    return withoutUndefined({
      id,
      name: job.name,
      needs: toList(job.needs),
      if: job.if,
      runsOn: runsOn === undefined ? [] : typeof runsOn === 'string' ? [runsOn] : Array.isArray(runsOn) ? runsOn : (runsOn.labels ?? []),
      env: { ...job.env },
      defaults: runDefaults(job.defaults?.run),
      timeoutMinutes: job['timeout-minutes'],
      continueOnError: job['continue-on-error'] ?? false,
      matrix: job.strategy?.matrix ? toMatrix(job.strategy.matrix) : undefined,
      failFast: job.strategy?.['fail-fast'] ?? true,
      maxParallel: job.strategy?.['max-parallel'],
      outputs: { ...job.outputs },
      steps,
      where: where(['jobs', id]),
    }) as GithubJob
  })
  const workflow: GithubWorkflow = {
    kind: 'github',
    name: input.name ?? (source === undefined ? 'workflow' : nameFromPath(source)),
    triggers: toTriggers(input.on),
    env: { ...input.env },
    defaults: runDefaults(input.defaults?.run),
    jobs,
    warnings: warnings.map((warning) => `${label}${warning.where ? `:${warning.where}` : ''}: ${warning.text}`),
  }
  if (source !== undefined) workflow.source = source
  return workflow
}

function toMatrix(matrix: Record<string, unknown>): MatrixInput {
  const { include, exclude, ...dimensions } = matrix
  return {
    dimensions: dimensions as Record<string, ExpressionValue[]>,
    include: (include ?? []) as MatrixCell[],
    exclude: (exclude ?? []) as MatrixCell[],
  }
}

function toTriggers(on: GithubWorkflowInput['on']): Record<string, EventFilter> {
  if (on === undefined) return {}
  if (typeof on === 'string') return { [on]: {} }
  if (Array.isArray(on)) return Object.fromEntries(on.map((event) => [event, {}]))
  const triggers: Record<string, EventFilter> = {}
  for (const [event, raw] of Object.entries(on)) {
    const filter = (event === 'push' || event === 'pull_request' ? raw : undefined) as Record<string, string[] | undefined> | null | undefined
    triggers[event] = withoutUndefined({
      branches: filter?.branches,
      branchesIgnore: filter?.['branches-ignore'],
      tags: filter?.tags,
      tagsIgnore: filter?.['tags-ignore'],
      types: filter?.types,
    })
  }
  return triggers
}

function runDefaults(run: { shell?: string | undefined; 'working-directory'?: string | undefined } | undefined) {
  return withoutUndefined({ shell: run?.shell, workingDirectory: run?.['working-directory'] })
}

function toList(value: string | string[] | undefined): string[] {
  return value === undefined ? [] : Array.isArray(value) ? value : [value]
}

function nameFromPath(path: string): string {
  const file = basename(path)
  const ext = extname(file)
  return (ext === '.yml' || ext === '.yaml' ? file.slice(0, -ext.length) : file) || 'workflow'
}

function withoutUndefined<T extends object>(value: T): { [K in keyof T]: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(value).filter(([, item]) => item !== undefined)) as { [K in keyof T]: Exclude<T[K], undefined> }
}
