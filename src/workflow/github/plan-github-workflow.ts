import { invalidOptions } from '../../errors.js'
import type { ExpressionValue } from './expression-parser.js'
import { findTemplateParts, substituteTemplate } from './expression-template.js'
import type { GithubJob, GithubWorkflow } from './github-workflow-schema.js'
import { cellLabel, expandMatrix, filterMatrixCells, valueText, type MatrixCell } from './matrix.js'
import { resolveRunsOn, type RunnerSpec, type RunsOnMapping } from './runs-on-mapping.js'

/**
 * What a run of a GitHub workflow will do, worked out before any VM exists: the selected jobs
 * (`--job`), each job's matrix cells (`--matrix` applied), and each cell's VM spec from `runs-on`.
 * `vm-pool run --list` prints it; a bad `--job` / `--matrix` fails here with exit code 2.
 */

export interface PlannedCell {
  label: string
  matrix: MatrixCell
  /** `runs-on` labels with `${{ matrix.* }}` substituted. */
  runsOn: string[]
  spec: RunnerSpec
  /** The mapping entry used (a label or "*"); undefined: the provider's default VM. */
  runner?: string
}

export interface PlannedJob {
  job: GithubJob
  name: string
  cells: PlannedCell[]
}

export interface WorkflowPlan {
  workflow: GithubWorkflow
  /** Selected jobs, in file order. */
  jobs: PlannedJob[]
}

export interface PlanOptions {
  /** Run only these jobs (`--job`); their `needs` outside the selection count as succeeded. */
  jobs?: readonly string[]
  /** Keep only matrix cells with these values (`--matrix key=value`). */
  matrix?: Readonly<Record<string, string>>
  runsOn?: RunsOnMapping
}

export function planGithubWorkflow(workflow: GithubWorkflow, options: PlanOptions = {}): WorkflowPlan {
  const label = workflow.source ?? workflow.name
  const ids = workflow.jobs.map((job) => job.id)
  for (const id of options.jobs ?? []) {
    if (!ids.includes(id)) throw invalidOptions(`--job ${id}: ${label} has no job "${id}" (jobs: ${ids.join(', ')})`, { operation: 'plan-workflow' })
  }
  const selected = workflow.jobs.filter((job) => !options.jobs?.length || options.jobs.includes(job.id))
  const filter = options.matrix ?? {}
  const usedKeys = new Set<string>()
  const jobs = selected.map((job): PlannedJob => {
    const all = expandMatrix(job.matrix)
    if (all.length === 0) throw invalidOptions(`${job.where}: jobs.${job.id}.strategy.matrix: no combination is left after exclude`, { operation: 'plan-workflow' })
    for (const cell of all) for (const key of Object.keys(cell)) usedKeys.add(key)
    const cells = filterMatrixCells(all, filter)
    if (cells.length === 0) {
      const given = Object.entries(filter).map(([key, value]) => `${key}=${value}`).join(' ')
      throw invalidOptions(`--matrix ${given}: no cell of job "${job.id}" matches; its cells: ${all.map((cell) => describeCell(cell)).join('; ')}`, { operation: 'plan-workflow' })
    }
    const name = job.name !== undefined && findTemplateParts(job.name).length === 0 ? job.name : job.id
    return { job, name, cells: cells.map((cell) => planCell(job, name, cell, options.runsOn ?? { entries: {} })) }
  })
  const unknown = Object.keys(filter).filter((key) => !usedKeys.has(key))
  if (unknown.length > 0) {
    throw invalidOptions(`--matrix ${unknown.join(', ')}: no selected job has ${unknown.length === 1 ? 'this key' : 'these keys'} in its matrix (keys: ${[...usedKeys].join(', ') || 'none'})`, { operation: 'plan-workflow' })
  }
  return { workflow, jobs }
}

function planCell(job: GithubJob, name: string, matrix: MatrixCell, mapping: RunsOnMapping): PlannedCell {
  const scope = { contexts: { matrix: matrix as ExpressionValue } }
  const substitute = (text: string) => {
    try {
      return substituteTemplate(text, scope)
    } catch (error) {
      throw invalidOptions(`${job.where}: jobs.${job.id}: ${(error as Error).message}`, { operation: 'plan-workflow' })
    }
  }
  // A name with ${{ matrix.* }} labels its cells by itself; otherwise GitHub appends the values.
  const label = job.name !== undefined && findTemplateParts(job.name).length > 0 ? substitute(job.name) : cellLabel(name, matrix)
  const runsOn = job.runsOn.map(substitute)
  const runner = resolveRunsOn(runsOn, mapping)
  const cell: PlannedCell = { label, matrix, runsOn, spec: runner.spec }
  if (runner.label !== undefined) cell.runner = runner.label
  return cell
}

function describeCell(cell: MatrixCell): string {
  return Object.entries(cell)
    .map(([key, value]) => `${key}=${valueText(value)}`)
    .join(' ')
}

/** `--list` output: jobs in order with their needs, cells and VMs. */
export function formatPlan(plan: WorkflowPlan): string {
  const lines = [`${plan.workflow.source ?? plan.workflow.name}: workflow "${plan.workflow.name}", ${plan.jobs.length} job(s), ${plan.jobs.reduce((n, job) => n + job.cells.length, 0)} VM(s)`]
  for (const { job, name, cells } of plan.jobs) {
    const needs = job.needs.length > 0 ? `  needs: ${job.needs.join(', ')}` : ''
    const condition = job.if !== undefined ? `  if: ${String(job.if)}` : ''
    lines.push(`  ${job.id}${name !== job.id ? ` (${name})` : ''}: ${cells.length} cell(s)${needs}${condition}`)
    for (const cell of cells) {
      const vm = cell.runner === undefined ? 'the provider default VM' : `${describeSpec(cell.spec)} (runs-on mapping "${cell.runner}")`
      lines.push(`    - ${cell.label}${Object.keys(cell.matrix).length > 0 ? `  [${describeCell(cell.matrix)}]` : ''}  runs-on: ${cell.runsOn.join(', ') || '-'} → ${vm}`)
    }
  }
  for (const warning of plan.workflow.warnings) lines.push(`  warning: ${warning}`)
  return `${lines.join('\n')}\n`
}

function describeSpec(spec: RunnerSpec): string {
  const parts = [spec.image && `image ${spec.image}`, spec.cpus && `${spec.cpus} cpu`, spec.memoryMiB && `${spec.memoryMiB} MiB`, spec.diskGiB && `${spec.diskGiB} GiB disk`].filter(Boolean)
  return parts.length > 0 ? parts.join(', ') : 'the provider default VM'
}
