import { isVmPoolError } from '../../errors.js'
import { printable } from '../../util/printable-text.js'
import { getTimeoutScale } from '../../util/timeouts.js'
import { loadWorkflow } from '../../workflow/load-workflow.js'
import { runWorkflow, succeeded, type StepError, type WorkflowResult } from '../../workflow/run-workflow.js'
import { DEFAULT_MAX_CONCURRENT_SESSIONS } from '../../workflow/session-manager.js'
import type { Workflow } from '../../workflow/workflow-schema.js'
import { createHistoryRecorder } from '../../workflow/history/history-recorder.js'
import { PROVIDER_OPTION, UsageError, getProviderName, getProviderOptions, parseCommandArgs, type CliCommand, type CliIo } from '../cli-command.js'
import { openHistory } from '../open-history.js'
import { MAX_OUTPUT_LINES, formatDuration, formatEvent, formatKeptVm } from '../run-output.js'
import { openRunSessions, parseMaxConcurrent } from '../run-sessions.js'
import { GITHUB_RUN_OPTIONS, GITHUB_RUN_HELP, isGithubRun } from './run-github-options.js'

/** Exit code after Ctrl-C / SIGTERM, as shells report 128 + SIGINT. */
const INTERRUPTED_EXIT_CODE = 130

/** A workflow that never got a VM (limit, create failure, abort) in `--json` output. */
type RunEntry = WorkflowResult & { error?: StepError }

export const runCommand: CliCommand = {
  name: 'run',
  summary: 'run workflow files, each on exactly one VM',
  help: `Usage: vm-pool run <workflow.yml>... [--provider NAME] [--keep-vm] [--max-concurrent N] [--json]
       vm-pool run .github/workflows/ci.yml [--job ID]... [--matrix KEY=VALUE]... [--list] [--strict]

Run each workflow file on exactly one VM of its own: the VM is created before the first command,
setup, steps and cleanup all run on it in order, and it is deleted afterwards. A failed setup
command or step skips the rest, but cleanup ALWAYS runs (also after a timeout or Ctrl-C; only --keep-vm skips it).

Several files run concurrently, at most --max-concurrent VMs at a time; the others wait in line.

Options:
  -p, --provider NAME     where VMs come from: qemu, fake, ... (default: VM_POOL_PROVIDER, else qemu)
                          "fake" runs commands in a sandbox directory on this host (tests, demos)
      --keep-vm           debug mode: keep each VM as its steps (or its failure) left it: cleanup
                          commands are skipped, the VM is not deleted; prints vm-pool ssh / rm lines
      --max-concurrent N  workflows (= VMs) at the same time (default: ${DEFAULT_MAX_CONCURRENT_SESSIONS})
      --json              print the results as a JSON array on stdout; progress goes to stderr
  -h, --help              show this help

Output: one line per command as it finishes — workflow, phase, ok/FAIL/skip, exit code,
duration, name — the output of every failed command (last ${MAX_OUTPUT_LINES} lines of stdout and
stderr), and a summary line.

Workflow file (YAML):
  name: build                      # default: the file name
  env: { CI: "1" }                 # for every command
  setup:   [ { run: "mkdir -p work" } ]
  steps:                           # at least one
    - name: Build
      run: make                    # a shell line (sh), may span lines with |
      working-directory: work      # relative to the VM user's home
      timeout-seconds: 300         # default 3600; scaled by VM_POOL_TIMEOUT_SCALE
      continue-on-error: false     # true: report the failure, carry on, do not fail
      env: { TARGET: x86 }         # merged over the workflow env
  cleanup: [ { run: "rm -rf work" } ]   # always runs

${GITHUB_RUN_HELP}
Exit codes:
  0    every workflow succeeded
  1    a workflow failed (a command failed or timed out, or a VM could not be created)
  2    bad usage, an unreadable or invalid workflow file (with its line and key path),
       an unknown or unusable provider; nothing was run
  130  interrupted (Ctrl-C / SIGTERM): running commands were killed, cleanup ran, VMs deleted

Environment:
  VM_POOL_PROVIDER, VM_POOL_PROVIDER_OPTIONS (JSON), VM_POOL_STATE_DIR, VM_POOL_TIMEOUT_SCALE,
  VM_POOL_LEASE_STORE (postgres://... to share the lease table between machines), VM_POOL_HOST_ID,
  VM_POOL_HISTORY_DB (the command history file, or off), DEBUG=vm-pool* (stack traces and debug lines)

Examples:
  vm-pool run ci/build.yml
  vm-pool run --provider fake --max-concurrent 3 a.yml b.yml c.yml
  vm-pool run --keep-vm --json ci/build.yml > result.json
`,

  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, {
      ...PROVIDER_OPTION,
      'keep-vm': { type: 'boolean' },
      'max-concurrent': { type: 'string' },
      json: { type: 'boolean' },
      ...GITHUB_RUN_OPTIONS,
    })
    if (positionals.length === 0) throw new UsageError('missing workflow file: vm-pool run <workflow.yml>...')
    if (await isGithubRun(positionals, values)) return (await import('./run-github.js')).runGithubFiles(positionals, values, io)
    const maxConcurrent = parseMaxConcurrent(values['max-concurrent'])
    const json = values.json ?? false
    const keepVm = values['keep-vm'] ?? false
    // A bad VM_POOL_TIMEOUT_SCALE is bad usage (exit 2) before anything runs, not a failure of each workflow.
    getTimeoutScale(io.env)

    // Every file is read and validated before any VM exists: a typo in the third file must not
    // surface after the first two have already run.
    const workflows = await loadAll(positionals, io)
    if (!workflows) return 2

    const { sessions, close } = await openRunSessions(getProviderName(values.provider, io.env), getProviderOptions(io.env), maxConcurrent)
    const history = openHistory(io)
    const recordHistory = createHistoryRecorder(history, (message) => io.stderr.write(`${message}\n`))
    try {
      const progress = json ? io.stderr : io.stdout
      const labels = makeLabels(workflows)
      const started = performance.now()
      const entries = await Promise.all(
        workflows.map(async (workflow, index): Promise<RunEntry> => {
          const label = labels[index]!
          try {
            return await runWorkflow(workflow, {
              sessions,
              keepVm,
              signal: io.signal,
              onEvent: (event) => progress.write(formatEvent(label, event, event.type === 'command-end' ? recordHistory(workflow.name, '', event.result) : undefined)),
            })
          } catch (error) {
            // No VM could be had (create failed, aborted while queued): nothing ran, nothing to clean.
            const stepError: StepError = isVmPoolError(error) ? { code: error.code, message: error.message } : { code: 'VMPOOL_INTERNAL', message: (error as Error)?.message ?? String(error) }
            progress.write(`${label} error: ${printable(stepError.message, { multiline: true })}\n`)
            const entry: RunEntry = { name: workflow.name, status: 'failure', vm: '', durationMs: 0, steps: [], error: stepError }
            if (workflow.source !== undefined) entry.source = workflow.source
            if (io.signal.aborted) entry.aborted = true
            return entry
          }
        }),
      )
      for (const [index, entry] of entries.entries()) {
        if (entry.keptVm) progress.write(formatKeptVm(labels[index]!, entry.keptVm))
      }
      if (json) io.stdout.write(`${JSON.stringify(entries, null, 2)}\n`)
      progress.write(formatSummary(entries, Math.round(performance.now() - started), io.signal.aborted))
      if (io.signal.aborted) return INTERRUPTED_EXIT_CODE
      return entries.every((entry) => entry.status === 'success') ? 0 : 1
    } finally {
      history?.close()
      await close()
    }
  },
}

async function loadAll(paths: string[], io: CliIo): Promise<Workflow[] | undefined> {
  const results = await Promise.allSettled(paths.map((path) => loadWorkflow(path)))
  const failures = results.filter((result): result is PromiseRejectedResult => result.status === 'rejected')
  if (failures.length === 0) return results.map((result) => (result as PromiseFulfilledResult<Workflow>).value)
  for (const { reason } of failures) {
    if (!isVmPoolError(reason)) throw reason
    io.stderr.write(`${printable(reason.message, { multiline: true })}\n`)
  }
  io.stderr.write(`vm-pool run: nothing was run (${failures.length} of ${paths.length} workflow files invalid)\n`)
  return undefined
}

/** Prefixes for interleaved output, padded to one width; the same name twice gets `#2`. Printable: names are user input. */
function makeLabels(workflows: Workflow[]): string[] {
  const seen = new Map<string, number>()
  const names = workflows.map((workflow) => {
    const count = (seen.get(workflow.name) ?? 0) + 1
    seen.set(workflow.name, count)
    return printable(count === 1 ? workflow.name : `${workflow.name}#${count}`)
  })
  const width = Math.max(...names.map((name) => name.length))
  return names.map((name) => `[${name}]`.padEnd(width + 2))
}

function formatSummary(entries: RunEntry[], durationMs: number, aborted: boolean): string {
  const failed = entries.filter((entry) => entry.status !== 'success')
  const passed = entries.length - failed.length
  const what = `${entries.length} workflow${entries.length === 1 ? '' : 's'}`
  const outcome = failed.length === 0 ? `${passed} succeeded` : `${passed} succeeded, ${failed.length} failed (${failed.map(describeFailure).join('; ')})`
  const interrupted = aborted ? '; interrupted: running commands killed, cleanup ran' : ''
  return `vm-pool run: ${what}, ${outcome} in ${formatDuration(durationMs)}${interrupted}\n`
}

/** `build: step "test"`: where to look first. */
function describeFailure(entry: RunEntry): string {
  const name = printable(entry.name)
  const first = entry.steps.find((step) => !step.skipped && !step.continuedOnError && !succeeded(step))
  if (first) return `${name}: ${first.phase} "${printable(first.name)}"${first.timedOut ? ' timed out' : ''}`
  if (entry.error) return `${name}: ${entry.error.code}`
  if (entry.releaseError) return `${name}: VM not deleted`
  return entry.aborted ? `${name}: interrupted` : name
}
