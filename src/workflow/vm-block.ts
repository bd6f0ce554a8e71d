import { z } from 'zod'
import type { VmSpec } from '../providers/vm-provider.js'

/**
 * Which VM, as workflow files spell it (kebab-case, like the rest of the YAML): a workflow's `vm:` block
 * and each entry of a GitHub `runs-on` mapping. The Multipass flow this replaces took the same four
 * inputs: image, CPUs, memory, disk.
 */
export const vmBlockSchema = z
  .object(
    {
      image: z.string().min(1).optional(),
      cpus: z.number().int().positive().optional(),
      'memory-mib': z.number().int().positive().optional(),
      'disk-gib': z.number().int().positive().optional(),
    },
    { error: 'expected a mapping with image, cpus, memory-mib, disk-gib' },
  )
  .strict()

export type VmBlock = z.output<typeof vmBlockSchema>

/** The spec a `vm:` block asks for; keys the block leaves out stay out (the provider's defaults apply). */
export function vmBlockToSpec(block: VmBlock): Omit<VmSpec, 'name' | 'labels'> {
  const spec: Omit<VmSpec, 'name' | 'labels'> = {}
  if (block.image !== undefined) spec.image = block.image
  if (block.cpus !== undefined) spec.cpus = block.cpus
  if (block['memory-mib'] !== undefined) spec.memoryMiB = block['memory-mib']
  if (block['disk-gib'] !== undefined) spec.diskGiB = block['disk-gib']
  return spec
}
