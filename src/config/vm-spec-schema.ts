import { z } from 'zod'

/** A `VmSpec` without its name (the pool, a session manager or the plugin chooses names). */
export const vmSpecSchema = z
  .object({
    image: z.string().min(1).optional(),
    cpus: z.number().int().positive().optional(),
    memoryMiB: z.number().int().positive().optional(),
    diskGiB: z.number().int().positive().optional(),
    labels: z.record(z.string(), z.string()).optional(),
  })
  .strict()
