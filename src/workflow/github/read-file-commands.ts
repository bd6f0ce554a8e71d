import { VmPoolError, VmPoolTimeoutError } from '../../errors.js'
import type { Vm } from '../../providers/vm-provider.js'
import { quoteShellArg } from '../../transport/shell.js'
import { scaleTimeoutBy } from '../../util/timeouts.js'
import { FILE_COMMAND_FILES, FILE_COMMAND_MAX_BYTES, FileCommandError, makeReadBackCommand, parseFileCommands, splitReadBack, type FileCommands } from './file-commands.js'

/** Reading back and emptying GITHUB_ENV and friends is one small command; this long is plenty under TCG (scaled). */
export const FILE_COMMANDS_TIMEOUT_MS = 60_000

export interface ReadFileCommandsOptions {
  /** Multiplies `FILE_COMMANDS_TIMEOUT_MS` (`VM_POOL_TIMEOUT_SCALE`). */
  scale: number
  /** A cap on the timeout (after a cancel). */
  capMs?: number
  signal?: AbortSignal
}

/**
 * One command on the step's VM: print GITHUB_ENV, GITHUB_OUTPUT, GITHUB_PATH and GITHUB_STEP_SUMMARY of
 * `dir` (see file-commands.ts for the framing), empty them, and parse what the step wrote.
 * Throws a `VmPoolError` (the exec failed, timed out) or a `FileCommandError` (a file written wrong).
 */
export async function readFileCommands(vm: Vm, dir: string, options: ReadFileCommandsOptions): Promise<FileCommands> {
  let timeoutMs = scaleTimeoutBy(FILE_COMMANDS_TIMEOUT_MS, options.scale)
  if (options.capMs !== undefined) timeoutMs = Math.min(timeoutMs, options.capMs)
  const exec = await vm.exec(makeReadBackCommand(quoteShellArg(dir)), {
    timeoutMs,
    // Room for every file at its cap, so nothing is dropped from the middle.
    maxOutputBytes: FILE_COMMAND_FILES.length * (FILE_COMMAND_MAX_BYTES + 1) + 64,
    ...(options.signal ? { signal: options.signal } : {}),
  })
  const what = `reading back GITHUB_ENV, GITHUB_OUTPUT, GITHUB_PATH and GITHUB_STEP_SUMMARY from ${dir}`
  if (exec.timedOut) {
    throw new VmPoolTimeoutError({ operation: 'file-commands', vm: vm.name, timeoutName: 'FILE_COMMANDS_TIMEOUT_MS', timeoutMs, message: `${what} took longer than FILE_COMMANDS_TIMEOUT_MS (${timeoutMs} ms)`, hint: 'a busy machine: raise VM_POOL_TIMEOUT_SCALE' })
  }
  if (exec.exitCode !== 0) {
    throw new VmPoolError({ code: 'VMPOOL_EXEC_FAILED', operation: 'file-commands', vm: vm.name, message: `${what} failed (exit ${exec.exitCode})${exec.stderr.trim() ? `: ${exec.stderr.trim()}` : ''}` })
  }
  if (exec.stdoutDroppedBytes !== undefined) throw new FileCommandError(`${what}: ${exec.stdoutDroppedBytes} bytes more than expected`)
  return parseFileCommands(splitReadBack(exec.stdout))
}
