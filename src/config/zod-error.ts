import type { z } from 'zod'

/** `a.b[2].c: expected number, got string; other: ...` — every issue with its key path. */
export function formatZodError(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const path = issue.path.reduce<string>((out, key) => (typeof key === 'number' ? `${out}[${key}]` : out ? `${out}.${String(key)}` : String(key)), '')
      return path ? `${path}: ${issue.message}` : issue.message
    })
    .join('; ')
}
