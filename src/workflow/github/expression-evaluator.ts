import { walkExpression, type ExpressionNode, type ExpressionValue } from './expression-parser.js'

/**
 * Evaluates parsed GitHub Actions expressions with GitHub's rules: loose equality (different types
 * compare as numbers), case-insensitive string comparison, `&&`/`||` returning an operand, a missing
 * property being `null` rather than an error, and the functions of the expression syntax docs.
 */

/** What `success()`, `failure()` and `cancelled()` answer where the expression is evaluated. */
export interface StatusFunctions {
  success: boolean
  failure: boolean
  cancelled: boolean
}

export interface EvaluationScope {
  /** `github`, `env`, `matrix`, `needs`, `steps`, `runner`, `job`, `strategy`, … */
  contexts: Record<string, ExpressionValue>
  /** Absent outside `if:`; a status function then answers as if everything so far succeeded. */
  status?: StatusFunctions
}

/** A run-time failure (`fromJSON` of bad JSON, `format` with a missing argument). */
export class ExpressionEvaluationError extends Error {
  override name = 'ExpressionEvaluationError'
}

export const STATUS_FUNCTIONS = ['success', 'failure', 'always', 'cancelled'] as const

/** Function name (lower case, as GitHub matches them) → number of arguments [min, max]. */
export const EXPRESSION_FUNCTIONS: Record<string, [number, number]> = {
  contains: [2, 2],
  startswith: [2, 2],
  endswith: [2, 2],
  format: [1, Infinity],
  join: [1, 2],
  tojson: [1, 1],
  fromjson: [1, 1],
  success: [0, 0],
  failure: [0, 0],
  always: [0, 0],
  cancelled: [0, 0],
}

// Arrays made by the `.*` filter: a property access on one maps over its elements.
const filtered = new WeakSet<ExpressionValue[]>()

export function evaluateExpression(node: ExpressionNode, scope: EvaluationScope): ExpressionValue {
  switch (node.kind) {
    case 'literal':
      return node.value
    case 'context':
      return scope.contexts[node.name] ?? null
    case 'member':
      return property(evaluateExpression(node.object, scope), node.property)
    case 'index': {
      const object = evaluateExpression(node.object, scope)
      const index = evaluateExpression(node.index, scope)
      if (Array.isArray(object) && !filtered.has(object) && typeof index === 'number') return object[Math.trunc(index)] ?? null
      return property(object, toText(index))
    }
    case 'filter': {
      const object = evaluateExpression(node.object, scope)
      const values = Array.isArray(object) ? [...object] : object !== null && typeof object === 'object' ? Object.values(object) : []
      filtered.add(values)
      return values
    }
    case 'not':
      return !isTruthy(evaluateExpression(node.operand, scope))
    case 'binary': {
      const left = evaluateExpression(node.left, scope)
      if (node.operator === '&&') return isTruthy(left) ? evaluateExpression(node.right, scope) : left
      if (node.operator === '||') return isTruthy(left) ? left : evaluateExpression(node.right, scope)
      return compare(node.operator, left, evaluateExpression(node.right, scope))
    }
    case 'call':
      return call(node.name.toLowerCase(), node.args.map((arg) => evaluateExpression(arg, scope)), scope)
  }
}

function property(object: ExpressionValue, name: string): ExpressionValue {
  if (Array.isArray(object) && filtered.has(object)) {
    const values = object.map((item) => property(item, name)).filter((value) => value !== null)
    filtered.add(values)
    return values
  }
  if (object === null || typeof object !== 'object' || Array.isArray(object)) return null
  // Context keys are case-insensitive in GitHub (`github.Ref` is `github.ref`).
  if (Object.hasOwn(object, name)) return object[name] ?? null
  const key = Object.keys(object).find((candidate) => candidate.toLowerCase() === name.toLowerCase())
  return key === undefined ? null : (object[key] ?? null)
}

function call(name: string, args: ExpressionValue[], scope: EvaluationScope): ExpressionValue {
  const status = scope.status ?? { success: true, failure: false, cancelled: false }
  switch (name) {
    case 'success':
      return status.success
    case 'failure':
      return status.failure
    case 'cancelled':
      return status.cancelled
    case 'always':
      return true
    case 'contains': {
      const [search, item] = args as [ExpressionValue, ExpressionValue]
      if (Array.isArray(search)) return search.some((element) => looseEquals(element, item))
      return toText(search).toLowerCase().includes(toText(item).toLowerCase())
    }
    case 'startswith':
      return toText(args[0]!).toLowerCase().startsWith(toText(args[1]!).toLowerCase())
    case 'endswith':
      return toText(args[0]!).toLowerCase().endsWith(toText(args[1]!).toLowerCase())
    case 'format':
      return format(toText(args[0]!), args.slice(1))
    case 'join': {
      const separator = args.length > 1 ? toText(args[1]!) : ','
      return Array.isArray(args[0]) ? args[0].map(toText).join(separator) : toText(args[0]!)
    }
    case 'tojson':
      return JSON.stringify(args[0], null, 2)
    case 'fromjson':
      try {
        return JSON.parse(toText(args[0]!)) as ExpressionValue
      } catch (error) {
        throw new ExpressionEvaluationError(`fromJSON: not valid JSON (${(error as Error).message.split('\n')[0]})`)
      }
    default:
      throw new ExpressionEvaluationError(`unknown function ${name}()`)
  }
}

function format(template: string, args: ExpressionValue[]): string {
  return template.replace(/\{\{|\}\}|\{(\d+)\}/g, (match, index: string | undefined) => {
    if (match === '{{') return '{'
    if (match === '}}') return '}'
    const value = args[Number(index)]
    if (value === undefined) throw new ExpressionEvaluationError(`format: no argument for {${index}} (got ${args.length})`)
    return toText(value)
  })
}

function compare(operator: BinaryOperator, left: ExpressionValue, right: ExpressionValue): boolean {
  if (operator === '==') return looseEquals(left, right)
  if (operator === '!=') return !looseEquals(left, right)
  let a: number | string
  let b: number | string
  if (typeof left === 'string' && typeof right === 'string') {
    a = left.toLowerCase()
    b = right.toLowerCase()
  } else {
    a = toNumber(left)
    b = toNumber(right)
  }
  switch (operator) {
    case '<':
      return a < b
    case '<=':
      return a <= b
    case '>':
      return a > b
    default:
      return a >= b
  }
}

type BinaryOperator = '<' | '<=' | '>' | '>=' | '==' | '!='

/** GitHub's `==`: same type compares directly (strings ignoring case); different types compare as numbers. */
export function looseEquals(left: ExpressionValue, right: ExpressionValue): boolean {
  const kind = (value: ExpressionValue) => (value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value)
  if (kind(left) === kind(right)) {
    if (typeof left === 'string') return left.toLowerCase() === (right as string).toLowerCase()
    return left === right
  }
  return toNumber(left) === toNumber(right)
}

function toNumber(value: ExpressionValue): number {
  if (value === null) return 0
  if (typeof value === 'boolean') return value ? 1 : 0
  if (typeof value === 'number') return value
  if (typeof value === 'string') return value.trim() === '' ? 0 : Number(value.trim())
  return Number.NaN
}

export function isTruthy(value: ExpressionValue): boolean {
  if (value === null) return false
  if (typeof value === 'boolean') return value
  if (typeof value === 'number') return value !== 0 && !Number.isNaN(value)
  if (typeof value === 'string') return value !== ''
  return true
}

/** How a value is written into a string (`run:`, `env`, a name): objects and arrays as GitHub writes them. */
export function toText(value: ExpressionValue): string {
  if (value === null) return ''
  if (typeof value === 'string') return value
  if (typeof value === 'boolean' || typeof value === 'number') return String(value)
  return Array.isArray(value) ? 'Array' : 'Object'
}

/** True when the expression calls a status function itself (then `success() &&` is not implied). */
export function usesStatusFunction(node: ExpressionNode): boolean {
  for (const child of walkExpression(node)) {
    if (child.kind === 'call' && (STATUS_FUNCTIONS as readonly string[]).includes(child.name.toLowerCase())) return true
  }
  return false
}
