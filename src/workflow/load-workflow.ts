import { readFile } from 'node:fs/promises'
import { basename, extname } from 'node:path'
import { isMap, isScalar, LineCounter, parseDocument, visit, type Document } from 'yaml'
import { z } from 'zod'
import { VmPoolError } from '../errors.js'
import { formatZodError } from '../config/zod-error.js'
import { normalizeWorkflowInput, workflowCommandSchema, workflowInputSchema, type Workflow, type WorkflowInput } from './workflow-schema.js'

const FORMAT_HINT =
  'a workflow has `name`, `env`, `setup`, `steps` (at least one) and `cleanup`; each command has `run` and optionally `name`, `working-directory`, `continue-on-error`, `timeout-seconds`, `env` (see "Workflows" in the vm-pool docs)'

const TOP_LEVEL_KEYS = Object.keys(workflowInputSchema.shape)
const COMMAND_KEYS = Object.keys(workflowCommandSchema.shape)

/**
 * Parse a workflow from YAML text. `source` (a file name) prefixes every message so the user knows
 * where to look. Throws `VMPOOL_WORKFLOW_INVALID` naming the line and column of malformed YAML, and the
 * key path (plus line) of every schema problem, e.g. `steps[2].timeout-seconds: expected a positive number`.
 */
export function parseWorkflow(text: string, source?: string): Workflow {
  const label = source ?? '<workflow>'
  const lineCounter = new LineCounter()
  const doc = parseDocument(text, { lineCounter, prettyErrors: false })
  const yamlError = doc.errors[0]
  if (yamlError) {
    const offset = yamlError.pos[0]
    const { line, col } = lineCounter.linePos(offset)
    // yaml appends "at line N, column M"; we already say where, in the editor-friendly file:line:col form.
    const reason = yamlError.message.replace(/ at line \d+, column \d+:?[\s\S]*$/, '')
    throw new VmPoolError({
      code: 'VMPOOL_WORKFLOW_INVALID',
      operation: 'load-workflow',
      message: `invalid YAML in ${label}:${line}:${col}: ${reason}\n${codeFrame(text, line, col)}`,
      hint: 'fix the YAML syntax at that line (indentation, an unclosed bracket or quote, a tab instead of spaces)',
      details: { source: label, line, column: col, yamlCode: yamlError.code },
    })
  }

  let data: unknown
  try {
    data = doc.toJS({ maxAliasCount: 100 })
  } catch (error) {
    // yaml reports an undefined alias and an alias bomb only here, as a plain ReferenceError.
    const offset = firstUnresolvedAlias(doc)
    const where = offset === undefined ? undefined : lineCounter.linePos(offset)
    throw new VmPoolError({
      code: 'VMPOOL_WORKFLOW_INVALID',
      operation: 'load-workflow',
      message: `invalid YAML in ${label}${where ? `:${where.line}:${where.col}` : ''}: ${(error as Error).message}${where ? `\n${codeFrame(text, where.line, where.col)}` : ''}`,
      hint: 'define each anchor (&name) before its alias (*name), and do not nest aliases to expand the document',
      details: { source: label, ...(where ? { line: where.line, column: where.col } : {}) },
      cause: error,
    })
  }
  return validateWorkflow(data, source, { doc, lineCounter })
}

/** Offset of the first alias (`*name`) with no anchor before it, if any. */
function firstUnresolvedAlias(doc: Document): number | undefined {
  let offset: number | undefined
  visit(doc, {
    Alias(_, node) {
      if (node.resolve(doc) !== undefined) return undefined
      offset = node.range?.[0]
      return visit.BREAK
    },
  })
  return offset
}

/**
 * A workflow written in code, in the same shape as the YAML (`working-directory`, `timeout-seconds`, …),
 * validated like a file: `defineWorkflow({ name: 'build', steps: [{ run: 'make' }] })`.
 */
export function defineWorkflow(input: WorkflowInput, source?: string): Workflow {
  return validateWorkflow(input, source)
}

function validateWorkflow(input: unknown, source: string | undefined, yaml?: { doc: Document; lineCounter: LineCounter }): Workflow {
  const label = source ?? '<workflow>'
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
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    const reason = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : code === 'EACCES' ? 'permission denied' : (error as Error).message
    throw new VmPoolError({
      code: 'VMPOOL_WORKFLOW_INVALID',
      operation: 'load-workflow',
      message: `cannot read workflow file ${path}: ${reason}`,
      hint: 'check the path (it is resolved against the current directory)',
      details: { source: path },
      cause: error,
    })
  }
  return parseWorkflow(text, path)
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

type Path = (string | number)[]

function describeIssues(error: z.ZodError, yaml: { doc: Document; lineCounter: LineCounter } | undefined): Problem[] {
  const problems: Problem[] = []
  const at = (path: Path, key?: string) => {
    const offset = yaml ? locate(yaml.doc, path, key) : undefined
    if (offset === undefined || !yaml) return undefined
    const { line, col } = yaml.lineCounter.linePos(offset)
    return `${line}:${col}`
  }
  for (const issue of error.issues) {
    const path = issue.path.filter((key): key is string | number => typeof key !== 'symbol')
    if (issue.code === 'unrecognized_keys') {
      const allowed = path.length === 0 ? TOP_LEVEL_KEYS : COMMAND_KEYS
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

function formatPath(path: Path): string {
  return path.reduce<string>((out, key) => (typeof key === 'number' ? `${out}[${key}]` : out ? `${out}.${key}` : key), '')
}

/** Offset of the node at `path` (or of `key` in the mapping at `path`); falls back to the nearest ancestor. */
function locate(doc: Document, path: Path, key?: string): number | undefined {
  const nodeAt = (p: Path): unknown => (p.length === 0 ? doc.contents : doc.getIn(p, true))
  if (key !== undefined) {
    const map = nodeAt(path)
    if (isMap(map)) {
      const pair = map.items.find((item) => isScalar(item.key) && String(item.key.value) === key)
      const range = pair && isScalar(pair.key) ? pair.key.range : undefined
      if (range) return range[0]
    }
  }
  for (let p = [...path]; ; p = p.slice(0, -1)) {
    const node = nodeAt(p) as { range?: [number, number, number] } | null | undefined
    if (node && typeof node === 'object' && node.range) return node.range[0]
    if (p.length === 0) return undefined
  }
}

function codeFrame(text: string, line: number, col: number): string {
  const source = text.split('\n')[line - 1] ?? ''
  return `  ${line} | ${source}\n  ${' '.repeat(String(line).length)} | ${' '.repeat(Math.max(0, col - 1))}^`
}

/** A likely intended key: small edit distance, so `timeout` → `timeout-seconds` and `working_directory` → `working-directory`. */
function closest(key: string, allowed: string[]): string | undefined {
  let best: string | undefined
  let bestDistance = Infinity
  for (const candidate of allowed) {
    const distance = candidate.startsWith(key) || key.startsWith(candidate) ? 1 : editDistance(key.toLowerCase(), candidate)
    if (distance < bestDistance) {
      best = candidate
      bestDistance = distance
    }
  }
  return bestDistance <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = current
  }
  return previous[b.length]!
}
