import { basename, extname } from 'node:path'
import type { Document, LineCounter } from 'yaml'
import { z } from 'zod'
import { VmPoolError } from '../errors.js'
import { formatZodError } from '../config/zod-error.js'
import { printable } from '../util/printable-text.js'
import { vmBlockSchema } from './vm-block.js'
import { closest, formatPath, lineColAt, parseYamlSource, readWorkflowFile, type KeyPath } from './yaml-source.js'
import { normalizeWorkflowInput, workflowCommandSchema, workflowInputSchema, type Workflow, type WorkflowInput } from './workflow-schema.js'

const FORMAT_HINT =
  'a workflow has `name`, `vm` (image, cpus, memory-mib, disk-gib), `env`, `setup`, `steps` (at least one) and `cleanup`; each command has `run` and optionally `name`, `working-directory`, `continue-on-error`, `timeout-seconds`, `env` (see "Workflows" in the vm-pool docs)'

const TOP_LEVEL_KEYS = Object.keys(workflowInputSchema.shape)
const COMMAND_KEYS = Object.keys(workflowCommandSchema.shape)
const VM_KEYS = Object.keys(vmBlockSchema.shape)

/**
 * Parse a workflow from YAML text. `source` (a file name) prefixes every message so the user knows
 * where to look. Throws `VMPOOL_WORKFLOW_INVALID` naming the line and column of malformed YAML, and the
 * key path (plus line) of every schema problem, e.g. `steps[2].timeout-seconds: expected a positive number`.
 */
export function parseWorkflow(text: string, source?: string): Workflow {
  const yaml = parseYamlSource(text, source ?? '<workflow>')
  return validateWorkflow(yaml.data, source, yaml)
}

/**
 * A workflow written in code, in the same shape as the YAML (`working-directory`, `timeout-seconds`, …),
 * validated like a file: `defineWorkflow({ name: 'build', steps: [{ run: 'make' }] })`.
 */
export function defineWorkflow(input: WorkflowInput, source?: string): Workflow {
  return validateWorkflow(input, source)
}

function validateWorkflow(input: unknown, source: string | undefined, yaml?: { doc: Document; lineCounter: LineCounter }): Workflow {
  const label = printable(source ?? '<workflow>')
  const parsed = workflowInputSchema.safeParse(input)
  if (!parsed.success) {
    const problems = describeIssues(parsed.error, yaml)
    const message =
      problems.length === 1
        ? `invalid workflow ${label}${problems[0]!.where ? `:${problems[0]!.where}` : ''}: ${problems[0]!.text}`
        : `invalid workflow ${label} (${problems.length} problems):\n${problems.map((p) => `  ${p.where ? `${label}:${p.where}: ` : ''}${p.text}`).join('\n')}`
    throw new VmPoolError({
      code: 'VMPOOL_WORKFLOW_INVALID',
      operation: 'load-workflow',
      message,
      hint: FORMAT_HINT,
      details: { source: label, problems: problems.map((p) => `${p.where ? `${p.where}: ` : ''}${p.text}`) },
    })
  }
  return normalizeWorkflowInput(parsed.data, source === undefined ? 'workflow' : nameFromPath(source), source)
}

/** Read and parse a workflow file. A missing or unreadable file is `VMPOOL_WORKFLOW_INVALID` too (exit code 2 in the CLI). */
export async function loadWorkflow(path: string): Promise<Workflow> {
  return parseWorkflow(await readWorkflowFile(path), path)
}

function nameFromPath(path: string): string {
  const file = basename(path)
  const ext = extname(file)
  return (ext === '.yml' || ext === '.yaml' ? file.slice(0, -ext.length) : file) || 'workflow'
}

interface Problem {
  /** `line:col`, when the node could be found. */
  where: string | undefined
  text: string
}

function describeIssues(error: z.ZodError, yaml: { doc: Document; lineCounter: LineCounter } | undefined): Problem[] {
  const problems: Problem[] = []
  const at = (path: KeyPath, key?: string) => lineColAt(yaml, path, key)
  for (const issue of error.issues) {
    const path = issue.path.filter((key): key is string | number => typeof key !== 'symbol')
    if (issue.code === 'unrecognized_keys') {
      const allowed = path.length === 0 ? TOP_LEVEL_KEYS : path[0] === 'vm' ? VM_KEYS : COMMAND_KEYS
      for (const key of issue.keys) {
        const suggestion = closest(key, allowed)
        problems.push({
          where: at(path, key),
          text: `${formatPath([...path, key])}: unknown key${suggestion ? ` (did you mean "${suggestion}"?)` : ''}; allowed: ${allowed.join(', ')}`,
        })
      }
    } else if (issue.code === 'invalid_key') {
      const key = String(path.at(-1))
      const reason = issue.issues[0]?.message ?? issue.message
      problems.push({ where: at(path.slice(0, -1), key), text: `${formatPath(path)}: ${reason}` })
    } else {
      problems.push({ where: at(path), text: formatZodError(new z.ZodError([issue])) })
    }
  }
  return problems
}
