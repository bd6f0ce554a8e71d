import { ExpressionSyntaxError, parseExpression, walkExpression, type ExpressionNode, type ExpressionValue } from './expression-parser.js'
import { EXPRESSION_FUNCTIONS, evaluateExpression, isTruthy, toText, usesStatusFunction, type EvaluationScope } from './expression-evaluator.js'

/**
 * `${{ }}` in workflow strings and `if:` conditions: finding them, checking them before anything runs,
 * substituting them, and GitHub's rule that a condition without a status function means `success() && (…)`.
 */

/** Contexts a workflow may name. `secrets`, `vars` and `inputs` exist but are empty: vm-pool passes none. */
export const KNOWN_CONTEXTS = ['github', 'env', 'vars', 'secrets', 'inputs', 'matrix', 'strategy', 'needs', 'steps', 'runner', 'job'] as const

export interface TemplatePart {
  /** Offset of `${{` in the string. */
  start: number
  /** Offset just past `}}`. */
  end: number
  /** The expression between the braces. */
  expression: string
}

/** The `${{ … }}` parts of a string; a `}}` inside a quoted string does not end one. */
export function findTemplateParts(text: string): TemplatePart[] {
  const parts: TemplatePart[] = []
  let from = 0
  for (;;) {
    const start = text.indexOf('${{', from)
    if (start < 0) return parts
    let i = start + 3
    let quoted = false
    while (i < text.length && (quoted || !text.startsWith('}}', i))) {
      if (text[i] === "'") quoted = !quoted
      i++
    }
    if (i >= text.length) throw new ExpressionSyntaxError('"${{" without a closing "}}"', start)
    parts.push({ start, end: i + 2, expression: text.slice(start + 3, i) })
    from = i + 2
  }
}

const cache = new Map<string, ExpressionNode>()

function parseCached(expression: string): ExpressionNode {
  let node = cache.get(expression)
  if (!node) {
    node = parseExpression(expression)
    cache.set(expression, node)
  }
  return node
}

/** Replace every `${{ expr }}` with its value as text. */
export function substituteTemplate(text: string, scope: EvaluationScope): string {
  const parts = findTemplateParts(text)
  if (parts.length === 0) return text
  let out = ''
  let last = 0
  for (const part of parts) {
    out += text.slice(last, part.start) + toText(evaluateExpression(parseCached(part.expression), scope))
    last = part.end
  }
  return out + text.slice(last)
}

/**
 * A value that is exactly one `${{ expr }}` keeps its type (a matrix boolean for `continue-on-error`,
 * a number for `timeout-minutes`); anything else is substituted as text.
 */
export function evaluateValue(value: string, scope: EvaluationScope): ExpressionValue {
  const parts = findTemplateParts(value)
  const only = parts[0]
  if (parts.length === 1 && only && value.slice(0, only.start).trim() === '' && value.slice(only.end).trim() === '') {
    return evaluateExpression(parseCached(only.expression), scope)
  }
  return substituteTemplate(value, scope)
}

/**
 * An `if:` condition. Unset means `success()`; a condition that calls no status function means
 * `success() && (condition)`, as on GitHub. The `${{ }}` around it is optional.
 */
export function evaluateCondition(condition: string | boolean | number | undefined, scope: EvaluationScope): boolean {
  if (condition === undefined) return scope.status?.success ?? true
  if (typeof condition !== 'string') return isTruthy(condition) && (scope.status?.success ?? true)
  const node = conditionNode(condition)
  if (node === undefined) {
    // Text around a `${{ }}` makes it a string, and a non-empty string is true (GitHub behaves the same).
    return isTruthy(substituteTemplate(condition, scope)) && (scope.status?.success ?? true)
  }
  const value = isTruthy(evaluateExpression(node, scope))
  return usesStatusFunction(node) ? value : value && (scope.status?.success ?? true)
}

/** The expression of a condition, or undefined when it is a string template with text around `${{ }}`. */
function conditionNode(condition: string): ExpressionNode | undefined {
  const trimmed = condition.trim()
  const parts = findTemplateParts(trimmed)
  if (parts.length === 0) return parseCached(trimmed)
  const only = parts[0]!
  if (parts.length === 1 && only.start === 0 && only.end === trimmed.length) return parseCached(only.expression)
  return undefined
}

/** True when a condition, however written, names a status function (so it runs after a failure or a cancel). */
export function conditionUsesStatus(condition: string | boolean | number | undefined): boolean {
  if (typeof condition !== 'string') return false
  const node = conditionNode(condition)
  return node !== undefined && usesStatusFunction(node)
}

/**
 * Check a string before anything runs: syntax, known functions with the right number of arguments,
 * known contexts. `isCondition` parses the whole string as an expression when it has no `${{ }}`.
 * Returns one message per problem (empty when fine).
 */
export function checkTemplate(text: string, isCondition = false): string[] {
  let expressions: string[]
  try {
    const parts = findTemplateParts(text)
    expressions = parts.length === 0 ? (isCondition ? [text] : []) : parts.map((part) => part.expression)
  } catch (error) {
    return [(error as Error).message]
  }
  const problems: string[] = []
  for (const expression of expressions) {
    let node: ExpressionNode
    try {
      node = parseCached(expression)
    } catch (error) {
      if (!(error instanceof ExpressionSyntaxError)) throw error
      problems.push(`invalid expression "${expression.trim()}": ${error.message} (at character ${error.offset + 1})`)
      continue
    }
    for (const child of walkExpression(node)) {
      if (child.kind === 'call') {
        const arity = EXPRESSION_FUNCTIONS[child.name.toLowerCase()]
        if (!arity) {
          problems.push(
            child.name.toLowerCase() === 'hashfiles'
              ? 'hashFiles() is not supported: the files are in the VM, not on the host where expressions are evaluated'
              : `unknown function ${child.name}() in "${expression.trim()}"`,
          )
        } else if (child.args.length < arity[0] || child.args.length > arity[1]) {
          problems.push(`${child.name}() takes ${arity[0] === arity[1] ? arity[0] : `${arity[0]} or more`} argument(s), got ${child.args.length}`)
        }
      } else if (child.kind === 'context' && !(KNOWN_CONTEXTS as readonly string[]).includes(child.name)) {
        problems.push(`unknown context "${child.name}" in "${expression.trim()}" (known: ${KNOWN_CONTEXTS.join(', ')})`)
      }
    }
  }
  return problems
}

/** Names of the contexts a string refers to (e.g. to warn that `secrets.X` is empty here). */
export function contextsUsed(text: string, isCondition = false): Set<string> {
  const names = new Set<string>()
  try {
    const parts = findTemplateParts(text)
    const expressions = parts.length === 0 ? (isCondition ? [text] : []) : parts.map((part) => part.expression)
    for (const expression of expressions) {
      for (const child of walkExpression(parseCached(expression))) if (child.kind === 'context') names.add(child.name)
    }
  } catch {
    // reported by checkTemplate
  }
  return names
}
