import type { EvaluationScope } from './expression-evaluator.js'
import { substituteTemplate } from './expression-template.js'
import type { GithubJob } from './github-workflow-schema.js'

/**
 * `jobs.<id>.outputs`: substituted at the end of each cell with that cell's contexts (its `steps`,
 * `matrix`, `env`), and handed to the jobs that need it as `needs.<id>.outputs`
 * (docs/workflows.md, "Job outputs").
 */

/** One cell's outputs. Throws, naming the output, when a value's expression fails. */
export function evaluateJobOutputs(job: GithubJob, scope: EvaluationScope): Record<string, string> {
  const outputs: Record<string, string> = {}
  for (const [name, template] of Object.entries(job.outputs)) {
    try {
      outputs[name] = substituteTemplate(template, scope)
    } catch (error) {
      throw new Error(`${job.where}: outputs.${name}: ${(error as Error).message}`, { cause: error })
    }
  }
  return outputs
}

/**
 * The job's outputs from its cells' outputs, in the order the cells finished: as on GitHub, the last
 * cell to finish wins for a name — but an empty value (a cell whose step did not set it) does not
 * overwrite another cell's value, so each cell of a matrix may set its own names.
 */
export function mergeJobOutputs(cells: readonly Record<string, string>[]): Record<string, string> {
  const merged: Record<string, string> = {}
  for (const outputs of cells) {
    for (const [name, value] of Object.entries(outputs)) if (value !== '' || !(name in merged)) merged[name] = value
  }
  return merged
}
