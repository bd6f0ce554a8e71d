import { isVmPoolError } from '../errors.js'
import { CommandHistory, getHistoryPath } from '../workflow/history/command-history.js'
import type { CliIo } from './cli-command.js'

/**
 * The command history for a command that runs workflows, or undefined when it is off
 * (`VM_POOL_HISTORY_DB=off`) or cannot be opened — a run never fails because of its history; the
 * reason is printed once on stderr.
 */
export function openHistory(io: CliIo): CommandHistory | undefined {
  const path = getHistoryPath(io.env)
  if (path === undefined) return undefined
  try {
    return CommandHistory.open({ path, onNotice: (message) => io.stderr.write(`${message}\n`) })
  } catch (error) {
    io.stderr.write(`vm-pool: running without a command history: ${isVmPoolError(error) ? error.shortMessage : (error as Error).message}\n`)
    return undefined
  }
}
