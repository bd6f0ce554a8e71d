import type { ExpressionValue } from './expression-parser.js'

/**
 * `strategy.matrix` expanded the way GitHub documents it ("Expanding or adding matrix configurations"):
 * the cross product of the lists in key order, then `exclude` (an entry removes every combination it
 * matches, partially or fully), then `include` — an entry is merged into every combination whose
 * ORIGINAL values it does not contradict (values added by an earlier include may be overwritten),
 * and becomes a combination of its own when it fits none. Pure functions, table-tested.
 */

export type MatrixCell = Record<string, ExpressionValue>

export interface MatrixInput {
  /** The lists: `os: [a, b]`. */
  dimensions: Record<string, ExpressionValue[]>
  include: MatrixCell[]
  exclude: MatrixCell[]
}

/** The combinations, in GitHub's order. A job without a matrix has one empty combination. */
export function expandMatrix(matrix: MatrixInput | undefined): MatrixCell[] {
  if (!matrix) return [{}]
  const keys = Object.keys(matrix.dimensions)
  let cells: MatrixCell[] = keys.length === 0 ? [] : [{}]
  for (const key of keys) {
    cells = cells.flatMap((cell) => matrix.dimensions[key]!.map((value) => ({ ...cell, [key]: value })))
  }
  cells = cells.filter((cell) => !matrix.exclude.some((entry) => Object.entries(entry).every(([key, value]) => key in cell && deepEquals(cell[key]!, value))))

  const originals = cells.map((cell) => ({ ...cell }))
  const extra: MatrixCell[] = []
  for (const entry of matrix.include) {
    let fitted = false
    for (const [index, cell] of cells.entries()) {
      const original = originals[index]!
      const fits = Object.entries(entry).every(([key, value]) => !(key in original) || deepEquals(original[key]!, value))
      if (!fits) continue
      Object.assign(cell, entry)
      fitted = true
    }
    if (!fitted) extra.push({ ...entry })
  }
  return [...cells, ...extra]
}

/** `build (debian, 20)`: the job's name and the cell's values, as GitHub labels matrix jobs. */
export function cellLabel(jobName: string, cell: MatrixCell): string {
  const values = Object.values(cell)
  if (values.length === 0) return jobName
  return `${jobName} (${values.map(valueText).join(', ')})`
}

/** A matrix value as the user would type it on the command line (`--matrix node=20`). */
export function valueText(value: ExpressionValue): string {
  return typeof value === 'object' && value !== null ? JSON.stringify(value) : String(value)
}

/**
 * `--matrix key=value` filters. A key that none of a job's cells has does not apply to that job; a key
 * that some have keeps only the cells with that value.
 */
export function filterMatrixCells(cells: MatrixCell[], filter: Record<string, string>): MatrixCell[] {
  const relevant = Object.entries(filter).filter(([key]) => cells.some((cell) => key in cell))
  return cells.filter((cell) => relevant.every(([key, value]) => key in cell && valueText(cell[key]!) === value))
}

function deepEquals(a: ExpressionValue, b: ExpressionValue): boolean {
  if (a === b) return true
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false
  if (Array.isArray(a) !== Array.isArray(b)) return false
  const keysA = Object.keys(a)
  const keysB = Object.keys(b)
  if (keysA.length !== keysB.length) return false
  return keysA.every((key) => deepEquals((a as Record<string, ExpressionValue>)[key]!, (b as Record<string, ExpressionValue>)[key] ?? null))
}
