import type { z } from 'zod'
import { printable } from '../util/printable-text.js'

/** Keys whose values are never quoted back or logged: tokens, private keys, passwords, API keys. */
const SECRET_KEY = /token|secret|password|passphrase|passwd|private|credential|auth|api[-_]?key|access[-_]?key/i

/** Does this option or environment variable name look like it holds a secret? (Its value is then never shown.) */
export function isSecretName(name: string): boolean {
  return SECRET_KEY.test(name)
}
const MAX_QUOTED_CHARS = 60

/**
 * `a.b[2].c: Too small: expected number to be >=1, got -1; other: ...` — every issue with its key path,
 * and, when the caller passes the input it validated, the bad value quoted (never for secret-looking keys).
 */
export function formatZodError(error: z.ZodError, input?: unknown): string {
  return error.issues
    .map((issue) => {
      const path = issue.path.reduce<string>((out, key) => (typeof key === 'number' ? `${out}[${key}]` : out ? `${out}.${String(key)}` : String(key)), '')
      const quoted = input === undefined || issue.code === 'unrecognized_keys' || issue.path.length === 0 ? '' : quoteValue(issue.path, input)
      // Keys and quoted values are input: escaped, so a key with a line break cannot print a line of its own.
      const message = issue.code === 'invalid_union' ? (describeUnion(issue) ?? issue.message) : issue.message
      return `${path ? `${printable(path)}: ` : ''}${message}${printable(quoted)}`
    })
    .join('; ')
}

const ARTICLE: Record<string, string> = { object: 'an object', array: 'an array', integer: 'an integer' }

/**
 * A value that fits none of a union's shapes: zod says only "Invalid input". When the value has the type of
 * exactly one alternative, that alternative's complaint (`Too small: ...`); when it has none of their types, the
 * shapes, e.g. `expected a boolean or an object`. Otherwise (failures deeper, inside an object) zod's words.
 */
function describeUnion(issue: z.core.$ZodIssueInvalidUnion): string | undefined {
  const wanted: string[] = []
  const nearMisses: string[] = []
  for (const alternative of issue.errors) {
    const first = alternative[0]
    if (!first || first.path.length > 0) return undefined
    if (first.code === 'invalid_type') wanted.push(ARTICLE[first.expected] ?? `a ${first.expected}`)
    else if (first.code === 'invalid_value') wanted.push(...first.values.map((value) => JSON.stringify(value) ?? String(value)))
    else nearMisses.push(first.message)
  }
  if (nearMisses.length > 0) return nearMisses.length === 1 ? nearMisses[0] : undefined
  const unique = [...new Set(wanted)]
  if (unique.length === 0) return undefined
  return `expected ${unique.length === 1 ? unique[0] : `${unique.slice(0, -1).join(', ')} or ${unique.at(-1)}`}`
}

function quoteValue(path: readonly PropertyKey[], input: unknown): string {
  if (path.some((key) => typeof key === 'string' && SECRET_KEY.test(key))) return ', got a value (not shown: it may be a secret)'
  let value: unknown = input
  for (const key of path) {
    if (typeof value !== 'object' || value === null) return ''
    value = (value as Record<PropertyKey, unknown>)[key]
  }
  if (value === undefined) return ''
  let text: string
  try {
    text = typeof value === 'function' ? 'a function' : (JSON.stringify(value) ?? String(value))
  } catch {
    text = String(value)
  }
  return `, got ${text.length > MAX_QUOTED_CHARS ? `${text.slice(0, MAX_QUOTED_CHARS)}…` : text}`
}
