import type { z } from 'zod'
import { VmPoolError } from '../errors.js'
import { formatZodError } from './zod-error.js'

/** Parse what a tool printed (`multipass list --format json`, `orbctl list -f json`) and check its shape. */
export function parseJsonOutput<T>(schema: z.ZodType<T>, text: string, what: string, provider: string): T {
  let data: unknown
  try {
    data = JSON.parse(text)
  } catch (error) {
    throw new VmPoolError({ code: 'VMPOOL_INTERNAL', provider, message: `${what} printed something that is not JSON: ${text.slice(0, 200)}`, cause: error })
  }
  const parsed = schema.safeParse(data)
  if (!parsed.success) throw new VmPoolError({ code: 'VMPOOL_INTERNAL', provider, message: `${what} printed unexpected JSON: ${formatZodError(parsed.error)}` })
  return parsed.data
}
