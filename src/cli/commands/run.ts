import { VmPoolError, isVmPoolError } from '../../errors.js'
import { createProvider } from '../../providers/provider-registry.js'
import type { JsonValue, VmProvider } from '../../providers/vm-provider.js'
import { createPool, type VmPool } from '../../pool/vm-pool.js'
import { getTimeoutScale } from '../../util/timeouts.js'
import { poolVmAllocator } from '../../workflow/vm-allocator.js'
import { loadWorkflow } from '../../workflow/load-workflow.js'
import { runWorkflow, succeeded, type StepError, type StepResult, type WorkflowEvent, type WorkflowResult } from '../../workflow/run-workflow.js'
import { DEFAULT_MAX_CONCURRENT_SESSIONS, SessionManager, WORKFLOW_VM_PREFIX } from '../../workflow/session-manager.js'
import type { Workflow } from '../../workflow/workflow-schema.js'
import { PROVIDER_OPTION, UsageError, getProviderName, getProviderOptions, parseCommandArgs, type CliCommand, type CliIo } from '../cli-command.js'

/** Lines of a failing command's stdout and stderr shown each; `--json` has everything. */
const MAX_OUTPUT_LINES = 40

/** Exit code after Ctrl-C / SIGTERM, as shells report 128 + SIGINT. */
const INTERRUPTED_EXIT_CODE = 130

/** A workflow that never got a VM (limit, create failure, abort) in `--json` output. */
type RunEntry = WorkflowResult & { error?: StepError }

export const runCommand: CliCommand = {
  name: 'run',
  summary: 'run workflow files, each on exactly one VM',
  help: `Usage: vm-pool run <workflow.yml>... [--provider NAME] [--keep-vm] [--max-concurrent N] [--json]

Run each workflow file on exactly one VM of its own: the VM is created before the first command,
setup, steps and cleanup all run on it in order, and it is deleted afterwards. A failed setup
command or step skips the rest, but cleanup ALWAYS runs (also after a timeout or Ctrl-C).

Several files run concurrently, at most --max-concurrent VMs at a time; the others wait in line.

Options:
  -p, --provider NAME     where VMs come from: qemu, fake, ... (default: VM_POOL_PROVIDER, else qemu)
                          "fake" runs commands in a sandbox directory on this host (tests, demos)
      --keep-vm           do not delete the VMs afterwards (debug mode); prints how to reach and
                          how to delete each one
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

Exit codes:
  0    every workflow succeeded
  1    a workflow failed (a command failed or timed out, or a VM could not be created)
  2    bad usage, an unreadable or invalid workflow file (with its line and key path),
       an unknown or unusable provider; nothing was run
  130  interrupted (Ctrl-C / SIGTERM): running commands were killed, cleanup ran, VMs deleted

Environment:
  VM_POOL_PROVIDER, VM_POOL_PROVIDER_OPTIONS (JSON), VM_POOL_STATE_DIR, VM_POOL_TIMEOUT_SCALE,
  DEBUG=vm-pool* (stack traces and debug lines)

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
    })
    if (positionals.length === 0) throw new UsageError('missing workflow file: vm-pool run <workflow.yml>...')
    const maxConcurrent = parseMaxConcurrent(values['max-concurrent'])
    const json = values.json ?? false
    const keepVm = values['keep-vm'] ?? false
    // A bad VM_POOL_TIMEOUT_SCALE is bad usage (exit 2) before anything runs, not a failure of each workflow.
    getTimeoutScale(io.env)

    // Every file is read and validated before any VM exists: a typo in the third file must not
    // surface after the first two have already run.
    const workflows = await loadAll(positionals, io)
    if (!workflows) return 2

    const providerName = getProviderName(values.provider, io.env)
    const providerOptions = getProviderOptions(io.env)
    const provider = await createProvider(providerName, providerOptions)
    let pool: VmPool | undefined
    try {
      await assertUsable(provider)
      // VMs come from the cross-process pool so the reaper deletes them if this process is killed
      // (SIGKILL skips our cleanup) and a concurrent `vm-pool gc` sees them as held, not orphaned.
      pool = createPool({ provider, prefix: WORKFLOW_VM_PREFIX, reaper: { providerName, providerOptions: providerOptions as Record<string, JsonValue> } })
      const sessions = new SessionManager({
        provider,
        prefix: WORKFLOW_VM_PREFIX,
        runId: pool.runId,
        allocator: poolVmAllocator(pool),
        maxConcurrentSessions: maxConcurrent,
        onLimit: 'queue',
        // Our own files wait for each other; how long is up to them, not to a queue timer.
        queueTimeoutMs: Number.POSITIVE_INFINITY,
      })
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
              onEvent: (event) => progress.write(formatEvent(label, event)),
            })
          } catch (error) {
            // No VM could be had (create failed, aborted while queued): nothing ran, nothing to clean.
            const stepError: StepError = isVmPoolError(error) ? { code: error.code, message: error.message } : { code: 'VMPOOL_INTERNAL', message: (error as Error)?.message ?? String(error) }
            progress.write(`${label} error: ${stepError.message}\n`)
            const entry: RunEntry = { name: workflow.name, status: 'failure', vm: '', durationMs: 0, steps: [], error: stepError }
            if (workflow.source !== undefined) entry.source = workflow.source
            if (io.signal.aborted) entry.aborted = true
            return entry
          }
        }),
      )
      for (const [index, entry] of entries.entries()) {
        if (entry.keptVm) progress.write(formatKeptVm(labels[index]!, entry))
      }
      if (json) io.stdout.write(`${JSON.stringify(entries, null, 2)}\n`)
      progress.write(formatSummary(entries, Math.round(performance.now() - started), io.signal.aborted))
      if (io.signal.aborted) return INTERRUPTED_EXIT_CODE
      return entries.every((entry) => entry.status === 'success') ? 0 : 1
    } finally {
      // Every session released its VM already (deleted, or kept with --keep-vm); drain stops the reaper.
      await pool?.drain()
      await provider.close?.()
    }
  },
}

function parseMaxConcurrent(raw: string | undefined): number {
  if (raw === undefined) return DEFAULT_MAX_CONCURRENT_SESSIONS
  const value = Number(raw)
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value) || value < 1) {
    throw new UsageError(`--max-concurrent must be a whole number of at least 1, got ${JSON.stringify(raw)}`)
  }
  return value
}

async function loadAll(paths: string[], io: CliIo): Promise<Workflow[] | undefined> {
  const results = await Promise.allSettled(paths.map((path) => loadWorkflow(path)))
  const failures = results.filter((result): result is PromiseRejectedResult => result.status === 'rejected')
  if (failures.length === 0) return results.map((result) => (result as PromiseFulfilledResult<Workflow>).value)
  for (const { reason } of failures) {
    if (!isVmPoolError(reason)) throw reason
    io.stderr.write(`${reason.message}\n`)
  }
  io.stderr.write(`vm-pool run: nothing was run (${failures.length} of ${paths.length} workflow files invalid)\n`)
  return undefined
}

async function assertUsable(provider: VmProvider): Promise<void> {
  if (!provider.probe) return
  const probe = await provider.probe()
  if (probe.usable) return
  throw new VmPoolError({
    code: 'VMPOOL_PROVIDER_UNAVAILABLE',
    provider: provider.name,
    operation: 'run',
    message: `the ${provider.name} provider is not usable here: ${probe.reason}`,
    hint: probe.hint ?? 'run vm-pool doctor, or choose another provider with --provider',
  })
}

/** Prefixes for interleaved output, padded to one width; the same name twice gets `#2`. */
function makeLabels(workflows: Workflow[]): string[] {
  const seen = new Map<string, number>()
  const names = workflows.map((workflow) => {
    const count = (seen.get(workflow.name) ?? 0) + 1
    seen.set(workflow.name, count)
    return count === 1 ? workflow.name : `${workflow.name}#${count}`
  })
  const width = Math.max(...names.map((name) => name.length))
  return names.map((name) => `[${name}]`.padEnd(width + 2))
}

function formatEvent(label: string, event: WorkflowEvent): string {
  switch (event.type) {
    case 'session-open':
      return `${label} vm ${event.vm} ready (${formatDuration(event.durationMs)})\n`
    case 'command-start':
      return ''
    case 'command-end':
      return formatCommand(label, event.result)
    case 'session-release':
      if (event.error) return `${label} vm ${event.vm} could NOT be deleted: ${event.error.message}\n`
      return `${label} vm ${event.vm} ${event.kept ? 'kept' : 'deleted'}\n`
  }
}

function formatCommand(label: string, result: StepResult): string {
  const head = `${label} ${result.phase.padEnd(7)}`
  if (result.skipped) return `${head} skip  ${''.padEnd(8)} ${''.padStart(8)}  ${result.name}\n`
  const ok = succeeded(result)
  const status = ok ? 'ok' : result.continuedOnError ? 'warn' : 'FAIL'
  const exit = result.error ? 'exit -' : `exit ${result.exitCode}`
  const note = result.timedOut ? ' (timed out)' : result.continuedOnError ? ' (continue-on-error)' : ''
  let line = `${head} ${status.padEnd(4)}  ${exit.padEnd(8)} ${formatDuration(result.durationMs).padStart(8)}  ${result.name}${note}\n`
  if (!ok) line += formatOutput(result)
  return line
}

function formatOutput(result: StepResult): string {
  const lines: string[] = []
  if (result.error) lines.push(`    error  | ${result.error.message.split('\n').join('\n           | ')}`)
  for (const stream of ['stdout', 'stderr'] as const) {
    const text = result[stream].replace(/\n$/, '')
    if (text === '') continue
    const all = text.split('\n')
    if (all.length > MAX_OUTPUT_LINES) lines.push(`    ${stream} | … ${all.length - MAX_OUTPUT_LINES} earlier lines (all of it: --json)`)
    for (const line of all.slice(-MAX_OUTPUT_LINES)) lines.push(`    ${stream} | ${line}`)
  }
  if (lines.length === 0) lines.push('    (no output)')
  return `${lines.join('\n')}\n`
}

function formatKeptVm(label: string, entry: RunEntry): string {
  const kept = entry.keptVm!
  return `${label} kept VM ${kept.name} (${kept.provider}, --keep-vm)\n    reach it:  ${kept.reach}\n    delete it: ${kept.remove}\n`
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
  const first = entry.steps.find((step) => !step.skipped && !step.continuedOnError && !succeeded(step))
  if (first) return `${entry.name}: ${first.phase} "${first.name}"${first.timedOut ? ' timed out' : ''}`
  if (entry.error) return `${entry.name}: ${entry.error.code}`
  if (entry.releaseError) return `${entry.name}: VM not deleted`
  return entry.aborted ? `${entry.name}: interrupted` : entry.name
}

function formatDuration(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`
}
