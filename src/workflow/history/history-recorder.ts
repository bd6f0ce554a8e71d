import { succeeded, type StepResult } from '../run-workflow.js'
import type { CommandHistory } from './command-history.js'

/** How many past runs of a failed step the "failed N of its last M runs" line looks at. */
export const FAILURE_NOTE_RUNS = 10

/**
 * Records each finished command of a workflow in the history and, for a failed one, returns the line
 * `vm-pool run` prints under it: "this step failed 4 of its last 10 runs". A history that stops
 * working (disk full, a lock held too long) is reported once through `onNotice`; the run goes on.
 */
export function createHistoryRecorder(history: CommandHistory | undefined, onNotice: (message: string) => void = () => {}) {
  let broken = !history
  return (workflow: string, job: string, result: StepResult): string | undefined => {
    if (broken || result.skipped) return undefined
    const passed = succeeded(result)
    try {
      history!.record({ workflow, job, step: result.name, command: result.command, exitCode: result.exitCode, passed, durationMs: result.durationMs, vm: result.vm })
      if (passed) return undefined
      const { failed, runs } = history!.recentFailures({ workflow, job, step: result.name }, FAILURE_NOTE_RUNS)
      return runs > 1 ? `this step failed ${failed} of its last ${runs} runs` : undefined
    } catch (error) {
      broken = true
      onNotice(`vm-pool: the command history stopped recording: ${(error as Error).message}`)
      return undefined
    }
  }
}
