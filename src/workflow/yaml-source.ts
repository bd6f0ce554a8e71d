import { readFile } from 'node:fs/promises'
import { isMap, isScalar, LineCounter, parseDocument, visit, type Document } from 'yaml'
import { VmPoolError } from '../errors.js'
import { printable } from '../util/printable-text.js'
import { closest } from '../util/closest-match.js'

/**
 * Reading a YAML workflow file with editor-friendly `file:line:col` messages, shared by the vm-pool
 * workflow format (load-workflow.ts) and GitHub Actions files (github/load-github-workflow.ts).
 */

export type KeyPath = (string | number)[]

/** A parsed YAML document and what is needed to point at a line in it. */
export interface YamlSource {
  data: unknown
  doc: Document
  lineCounter: LineCounter
  text: string
}

/** Read a workflow file. A missing or unreadable file is `VMPOOL_WORKFLOW_INVALID` (exit code 2 in the CLI). */
export async function readWorkflowFile(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8')
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    const reason = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : code === 'EACCES' ? 'permission denied' : (error as Error).message
    throw new VmPoolError({
      code: 'VMPOOL_WORKFLOW_INVALID',
      operation: 'load-workflow',
      message: `cannot read workflow file ${printable(path)}: ${reason}`,
      hint: 'check the path (it is resolved against the current directory)',
      details: { source: path },
      cause: error,
    })
  }
}

/** Parse YAML text; throws `VMPOOL_WORKFLOW_INVALID` naming the line and column of malformed YAML. */
export function parseYamlSource(text: string, rawLabel: string): YamlSource {
  const label = printable(rawLabel)
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
  return { data, doc, lineCounter, text }
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

/** `line:col` of the node at `path` (or of `key` in the mapping there), for messages; undefined without a document. */
export function lineColAt(yaml: Pick<YamlSource, 'doc' | 'lineCounter'> | undefined, path: KeyPath, key?: string): string | undefined {
  const offset = yaml ? locate(yaml.doc, path, key) : undefined
  if (offset === undefined || !yaml) return undefined
  const { line, col } = yaml.lineCounter.linePos(offset)
  return `${line}:${col}`
}

/** `steps[2].timeout-seconds`; keys are the file's own text, so control characters in them are escaped (util/printable-text.ts). */
export function formatPath(path: KeyPath): string {
  return printable(path.reduce<string>((out, key) => (typeof key === 'number' ? `${out}[${key}]` : out ? `${out}.${key}` : key), ''))
}

/** Offset of the node at `path` (or of `key` in the mapping at `path`); falls back to the nearest ancestor. */
export function locate(doc: Document, path: KeyPath, key?: string): number | undefined {
  const nodeAt = (p: KeyPath): unknown => (p.length === 0 ? doc.contents : doc.getIn(p, true))
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

export function codeFrame(text: string, line: number, col: number): string {
  const source = text.split('\n')[line - 1] ?? ''
  return `  ${line} | ${source}\n  ${' '.repeat(String(line).length)} | ${' '.repeat(Math.max(0, col - 1))}^`
}

export { closest }
