import { access } from 'node:fs/promises'
import { join } from 'node:path'
import { z } from 'zod'
import { VmPoolError } from '../../errors.js'
import { formatZodError } from '../../config/zod-error.js'
import type { VmSpec } from '../../providers/vm-provider.js'
import { lineColAt, parseYamlSource, readWorkflowFile } from '../yaml-source.js'

/**
 * Which VM a job gets for its `runs-on:` labels, from a small file (docs/workflows.md):
 *
 *   # .github/vm-pool.yml
 *   runs-on:
 *     ubuntu-latest: { image: debian-12, cpus: 2, memory-mib: 2048 }
 *     "*": { image: minimal }          # any other label
 *
 * The first of a job's labels with an entry wins, then "*"; with neither the provider's default VM is used.
 */

/** Looked for in the repository when `--runners` is not given. */
export const DEFAULT_RUNNERS_FILE = join('.github', 'vm-pool.yml')

const specSchema = z
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

const mappingSchema = z
  .object({ 'runs-on': z.record(z.string().min(1), specSchema, { error: 'expected a mapping of label: { image, cpus, memory-mib, disk-gib }' }) }, { error: 'expected a mapping with `runs-on:`' })
  .strict()

export type RunnerSpec = Omit<VmSpec, 'name' | 'labels'>

export interface RunsOnMapping {
  /** Where it was read from, for `--list`. */
  source?: string
  entries: Record<string, RunnerSpec>
}

export interface ResolvedRunner {
  spec: RunnerSpec
  /** The label (or "*") whose entry was used; undefined: the provider's default VM. */
  label?: string
}

export function parseRunsOnMapping(text: string, source: string): RunsOnMapping {
  const yaml = parseYamlSource(text, source)
  const parsed = mappingSchema.safeParse(yaml.data)
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      const path = issue.path.filter((key): key is string | number => typeof key !== 'symbol')
      const where = lineColAt(yaml, path)
      return `${source}${where ? `:${where}` : ''}: ${formatZodError(new z.ZodError([issue]))}`
    })
    throw new VmPoolError({
      code: 'VMPOOL_WORKFLOW_INVALID',
      operation: 'load-runners',
      message: `invalid runs-on mapping ${problems.length === 1 ? problems[0] : `(${problems.length} problems):\n  ${problems.join('\n  ')}`}`,
      hint: 'the file maps runs-on labels to VMs: runs-on: { ubuntu-latest: { image: debian-12, cpus: 2, memory-mib: 2048 } }',
      details: { source },
    })
  }
  const entries: Record<string, RunnerSpec> = {}
  for (const [label, spec] of Object.entries(parsed.data['runs-on'])) {
    const runner: RunnerSpec = {}
    if (spec.image !== undefined) runner.image = spec.image
    if (spec.cpus !== undefined) runner.cpus = spec.cpus
    if (spec['memory-mib'] !== undefined) runner.memoryMiB = spec['memory-mib']
    if (spec['disk-gib'] !== undefined) runner.diskGiB = spec['disk-gib']
    entries[label] = runner
  }
  return { source, entries }
}

/**
 * Read `path`, or `<repoDir>/.github/vm-pool.yml` when no path is given (absent: an empty mapping).
 * A given path that cannot be read is an error.
 */
export async function loadRunsOnMapping(path: string | undefined, repoDir: string): Promise<RunsOnMapping> {
  if (path === undefined) {
    const fallback = join(repoDir, DEFAULT_RUNNERS_FILE)
    const present = await access(fallback).then(
      () => true,
      () => false,
    )
    if (!present) return { entries: {} }
    path = fallback
  }
  return parseRunsOnMapping(await readWorkflowFile(path), path)
}

export function resolveRunsOn(labels: readonly string[], mapping: RunsOnMapping): ResolvedRunner {
  for (const label of [...labels, '*']) {
    const spec = mapping.entries[label]
    if (spec) return { spec: { ...spec }, label }
  }
  return { spec: {} }
}
