import { printable } from '../util/printable-text.js'
import { STEP_OUTPUT_MAX_BYTES, succeeded, type KeptVm, type StepResult, type WorkflowEvent } from '../workflow/run-workflow.js'

/**
 * The progress lines of `vm-pool run` and `vm-pool serve`: one line per command as it finishes (phase,
 * ok/FAIL/warn/skip, exit code, duration, name), the output of failed commands, VM lines.
 * Names, commands, VM names and messages come from workflow files and providers: each goes through
 * `printable` (util/printable-text.ts), so a `\n` in a step name cannot print a line of its own. Labels
 * arrive already printable (the callers pad them).
 */

/** Lines of a failing command's stdout and stderr shown each; `--json` has everything. */
export const MAX_OUTPUT_LINES = 40
/** Characters of one output line shown; a longer line (a progress bar, minified JSON) is cut with a note. */
export const MAX_OUTPUT_LINE_CHARS = 1000

/** `note` goes under a failed command (the history's "failed N of its last M runs"). */
export function formatEvent(label: string, event: WorkflowEvent, note?: string): string {
  switch (event.type) {
    case 'session-open':
      return `${label} vm ${printable(event.vm)} ready (${formatDuration(event.durationMs)})\n`
    case 'command-start':
      return ''
    case 'command-end':
      return formatCommand(label, event.result) + (note ? `    history | ${printable(note)}\n` : '')
    case 'session-release':
      if (event.error) return `${label} vm ${printable(event.vm)} could NOT be deleted: ${printable(event.error.message, { multiline: true })}\n`
      return `${label} vm ${printable(event.vm)} ${event.kept ? 'kept' : 'deleted'}\n`
  }
}

export function formatCommand(label: string, result: StepResult & { note?: string }): string {
  const head = `${label} ${result.phase.padEnd(7)}`
  const name = printable(result.name)
  if (result.skipped) return `${head} skip  ${''.padEnd(8)} ${''.padStart(8)}  ${name}${result.note ? ` (${printable(result.note)})` : ''}\n`
  const ok = succeeded(result)
  const status = ok ? 'ok' : result.continuedOnError ? 'warn' : 'FAIL'
  const exit = result.error ? 'exit -' : `exit ${result.exitCode}`
  const note = result.timedOut ? ' (timed out)' : result.continuedOnError ? ' (continue-on-error)' : ''
  let line = `${head} ${status.padEnd(4)}  ${exit.padEnd(8)} ${formatDuration(result.durationMs).padStart(8)}  ${name}${note}\n`
  if (!ok) line += formatOutput(result)
  return line
}

function formatOutput(result: StepResult): string {
  const lines: string[] = []
  if (result.error) lines.push(`    error  | ${printable(result.error.message, { multiline: true }).split('\n').join('\n           | ')}`)
  for (const stream of ['stdout', 'stderr'] as const) {
    // Command output keeps its lines and tabs; a `\r` or an escape sequence cannot rewrite what was printed before.
    const text = printable(result[stream].replace(/\n$/, ''), { multiline: true })
    if (text === '') continue
    const all = text.split('\n')
    const dropped = result[`${stream}DroppedBytes`]
    if (all.length > MAX_OUTPUT_LINES) lines.push(`    ${stream} | … ${all.length - MAX_OUTPUT_LINES} earlier lines${dropped ? ` and ${dropped} bytes from the middle` : ''} (${dropped ? `the first and last ${STEP_OUTPUT_MAX_BYTES / 2048} KiB` : 'all of it'}: --json)`)
    else if (dropped) lines.push(`    ${stream} | … ${dropped} bytes from the middle dropped`)
    for (const line of all.slice(-MAX_OUTPUT_LINES)) lines.push(`    ${stream} | ${cutLine(line)}`)
  }
  if (lines.length === 0) lines.push('    (no output)')
  return `${lines.join('\n')}\n`
}

/** A step's GITHUB_STEP_SUMMARY under its line, as written (Markdown is meant to be read as text too): its first lines, the rest in `--json`. */
export function formatStepSummary(summary: string): string {
  const all = printable(summary.replace(/\s+$/, ''), { multiline: true }).split('\n')
  const lines = all.slice(0, MAX_OUTPUT_LINES).map((line) => `    summary | ${cutLine(line)}`)
  if (all.length > MAX_OUTPUT_LINES) lines.push(`    summary | … ${all.length - MAX_OUTPUT_LINES} more lines (all of it: --json)`)
  return `${lines.join('\n')}\n`
}

function cutLine(line: string): string {
  if (line.length <= MAX_OUTPUT_LINE_CHARS) return line
  return `${line.slice(0, MAX_OUTPUT_LINE_CHARS)} … (${line.length - MAX_OUTPUT_LINE_CHARS} more characters: --json)`
}

export function formatKeptVm(label: string, kept: KeptVm): string {
  const provider = kept.provider === 'qemu' ? '' : ` --provider ${printable(kept.provider)}`
  return (
    `${label} kept VM ${printable(kept.name)} (${printable(kept.provider)}, --keep-vm)\n` +
    `    shell:     vm-pool ssh ${printable(kept.name)}${provider}\n` +
    `    delete it: vm-pool rm ${printable(kept.name)}${provider}\n` +
    `    without vm-pool:\n` +
    `      reach it:  ${printable(kept.reach)}\n` +
    `      remove:    ${printable(kept.remove)}\n`
  )
}

export function formatDuration(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`
}
