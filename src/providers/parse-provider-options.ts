import type { z } from 'zod'
import { formatZodError } from '../config/zod-error.js'
import { invalidOptions } from '../errors.js'

/**
 * Validate a provider factory's options at the edge: `invalid <name>Provider options: <key path>: ...`.
 * The options are never echoed whole (they may hold private keys or tokens); `formatZodError`
 * quotes single bad values, never those under secret-looking keys.
 */
export function parseProviderOptions<S extends z.ZodType>(schema: S, options: unknown, provider: string, hint?: string): z.output<S> {
  const parsed = schema.safeParse(options)
  if (!parsed.success) throw invalidOptions(`invalid ${provider}Provider options: ${formatZodError(parsed.error, options)}`, { provider, hint })
  return parsed.data
}
