import { existsSync } from 'node:fs'
import { CommandHistory, DEFAULT_HISTORY_MAX_ROWS, getHistoryPath, type FlakyStep, type StepStats } from '../../workflow/history/command-history.js'
import { UsageError, parseCommandArgs, type CliCommand } from '../cli-command.js'
import { formatDuration } from '../run-output.js'

const DEFAULT_SLOW_LIMIT = 10

export const historyCommand: CliCommand = {
  name: 'history',
  summary: 'success rates, flaky and slow steps of the workflows run so far',
  help: `Usage: vm-pool history [--flaky] [--slow] [--limit N] [--json]

Every command \`vm-pool run\` and \`vm-pool serve\` run is recorded: workflow, job, step, a hash of
the command (never its text), exit code, duration, VM and time. This shows what was recorded:

  (no option)   each step with its runs, success rate and durations
  --flaky       steps that both passed and failed running the same command, with their counts
  --slow        the slowest steps by average duration (--limit N, default ${DEFAULT_SLOW_LIMIT})
  --json        the same as JSON on stdout (with --flaky and --slow together: { flaky, slow })

When a step fails, \`vm-pool run\` prints one line from this history under it, e.g.
"this step failed 4 of its last 10 runs".

The history is a SQLite file (node:sqlite), at most ${DEFAULT_HISTORY_MAX_ROWS} rows (the oldest are
pruned). A file that is not a readable database is moved aside and a new one started.

Exit codes: 0 shown, 2 bad usage or the history is off.

Environment:
  VM_POOL_HISTORY_DB   the history file (default: <state dir>/history.sqlite), or off
  VM_POOL_STATE_DIR    the state dir (default: ~/.cache/vm-pool)
`,

  async run(args, io) {
    const { values } = parseCommandArgs(args, { flaky: { type: 'boolean' }, slow: { type: 'boolean' }, limit: { type: 'string' }, json: { type: 'boolean' } }, false)
    const limit = values.limit === undefined ? DEFAULT_SLOW_LIMIT : Number(values.limit)
    if (!Number.isSafeInteger(limit) || limit < 1) throw new UsageError(`--limit must be a whole number of at least 1, got ${JSON.stringify(values.limit)}`)
    const path = getHistoryPath(io.env)
    if (path === undefined) throw new UsageError('VM_POOL_HISTORY_DB=off: no command history is kept')
    if (!existsSync(path)) {
      if (values.json) io.stdout.write(values.flaky && values.slow ? '{ "flaky": [], "slow": [] }\n' : '[]\n')
      else io.stdout.write(`vm-pool history: nothing recorded yet (${path}); vm-pool run records every command\n`)
      return 0
    }
    const history = CommandHistory.open({ path, onNotice: (message) => io.stderr.write(`${message}\n`) })
    try {
      const flaky = values.flaky ? history.flakySteps() : undefined
      const slow = values.slow ? history.slowSteps(limit) : undefined
      if (values.json) {
        const data = flaky && slow ? { flaky, slow } : (flaky ?? slow ?? history.stepStats())
        io.stdout.write(`${JSON.stringify(data, null, 2)}\n`)
        return 0
      }
      if (flaky) io.stdout.write(formatFlaky(flaky))
      if (slow) io.stdout.write(formatSlow(slow))
      if (!flaky && !slow) io.stdout.write(formatStats(history.stepStats(), path))
      return 0
    } finally {
      history.close()
    }
  },
}

const stepPath = (step: { workflow: string; job: string; step: string }) => [step.workflow, step.job, step.step].filter(Boolean).join(' / ')

function formatStats(stats: StepStats[], path: string): string {
  const runs = stats.reduce((n, step) => n + step.runs, 0)
  const header = `vm-pool history: ${stats.length} step${stats.length === 1 ? '' : 's'}, ${runs} run${runs === 1 ? '' : 's'} recorded (${path})\n`
  const rows = stats.map((step) => [stepPath(step), String(step.runs), `${Math.round(step.successRate * 100)}%`, formatDuration(step.avgDurationMs), step.lastRunAt.slice(0, 19).replace('T', ' ')])
  return header + table(['STEP', 'RUNS', 'PASSED', 'AVG', 'LAST RUN (UTC)'], rows)
}

function formatFlaky(flaky: FlakyStep[]): string {
  if (flaky.length === 0) return 'flaky steps: none (no step both passed and failed with the same command)\n'
  const rows = flaky.map((step) => [stepPath(step), String(step.runs), String(step.passed), String(step.failed), step.commandHash])
  return `flaky steps (passed and failed with the same command):\n${table(['STEP', 'RUNS', 'PASSED', 'FAILED', 'COMMAND HASH'], rows)}`
}

function formatSlow(slow: StepStats[]): string {
  const rows = slow.map((step) => [stepPath(step), formatDuration(step.avgDurationMs), formatDuration(step.maxDurationMs), String(step.runs)])
  return `slowest steps (by average duration):\n${table(['STEP', 'AVG', 'MAX', 'RUNS'], rows)}`
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)))
  const line = (cells: string[]) => `  ${cells.map((cell, column) => (column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join('  ')}`.trimEnd()
  return `${[line(head), ...rows.map(line)].join('\n')}\n`
}
