import { collectGarbage, type GcDecision, type GcSkipped } from '../../pool/garbage-collector.js'
import { parseDuration } from '../../pool/duration.js'
import { SWEEP_PREFIXES, validatePrefix } from '../../util/vm-name.js'
import { createProvider } from '../../providers/provider-registry.js'
import { printable } from '../../util/printable-text.js'
import { getHostName } from '../../util/process-info.js'
import { getStateDir } from '../../util/state-dir.js'
import { PROVIDER_OPTION, getProviderName, getProviderOptions, parseCommandArgs, UsageError, type CliCommand } from '../cli-command.js'

export const gcCommand: CliCommand = {
  name: 'gc',
  summary: 'delete orphaned VMs left by crashed or interrupted runs',
  help: `Usage: vm-pool gc [--provider NAME] [--dry-run] [--older-than 30m] [--prefix P]... [--all]
                  [--assume-dead-host HOST]... [--json]

Delete VMs left behind by crashed or interrupted runs. Only VMs whose names start with a sweep
prefix are considered: ${SWEEP_PREFIXES.map((prefix) => `${prefix}-`).join(', ')}, and each --prefix.
Skipped (never touched, reported): names that match a sweep prefix but are no vm-pool VM name.
Kept: VMs whose lease holder is a live process (never deleted, not even with --all), healthy idle warm
VMs (unless --all), pytest-worker-<pid>-<unix time> VMs whose pid is alive and started before that time,
and VMs younger than --older-than. Everything else is deleted: VMs whose holder died, idle VMs past
their ttl or failing a health check, VMs no lease knows about.

Leases are read from, and deleted VMs removed from, this host's lease file (in VM_POOL_STATE_DIR), or
the PostgreSQL database in VM_POOL_LEASE_STORE (postgres://...; its password is never printed).

Options:
  -p, --provider NAME   provider (default: VM_POOL_PROVIDER, else qemu)
      --dry-run         decide and print, delete nothing
      --older-than AGE  only delete VMs at least this old: 90s, 30m, 2h, 1d; the unit is
                        required (default: any age)
      --prefix P        also sweep names starting with P- (repeatable)
      --all             also delete healthy idle warm VMs
      --assume-dead-host HOST
                        take every lease owner on host HOST as dead (repeatable): with the
                        lease file, owners on other hosts (an old CI container sharing the
                        state dir, this host before a rename) cannot be checked and otherwise
                        count as alive for ever; \`vm-pool ls\` shows them as PID@HOST (other
                        host). A PostgreSQL lease store (VM_POOL_LEASE_STORE) judges them by
                        their heartbeats instead
      --json            print the report as JSON on stdout

Exit status: 0 done, 1 a delete failed or the lease store could not be used, 2 bad usage or provider
unavailable.
`,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, {
      ...PROVIDER_OPTION,
      'dry-run': { type: 'boolean' },
      'older-than': { type: 'string' },
      prefix: { type: 'string', multiple: true },
      all: { type: 'boolean' },
      'assume-dead-host': { type: 'string', multiple: true },
      json: { type: 'boolean' },
    })
    if (positionals.length > 0) throw new UsageError(`unexpected arguments: ${positionals.join(' ')}`)
    const olderThanMs = values['older-than'] === undefined ? 0 : parseDuration(values['older-than'], '--older-than')
    const assumeDeadHosts = values['assume-dead-host'] ?? []
    for (const host of assumeDeadHosts) {
      // Owners on this host are judged by their pid: declaring them dead could delete a live run's VMs.
      if (host === getHostName()) throw new UsageError(`--assume-dead-host ${printable(host)} is this host: its owners are checked by pid, never assumed dead`)
      if (host.trim() === '') throw new UsageError('--assume-dead-host needs a host name')
    }
    const prefixes = (values.prefix ?? []).map((prefix) => validatePrefix(prefix.replace(/-$/, '')))
    const provider = await createProvider(getProviderName(values.provider, io.env), getProviderOptions(io.env))
    try {
      const report = await collectGarbage({
        provider,
        stateDir: getStateDir(undefined, io.env),
        dryRun: values['dry-run'] ?? false,
        olderThanMs,
        prefixes,
        all: values.all ?? false,
        assumeDeadHosts,
        warn: (message) => io.stderr.write(`vm-pool gc: warning: ${message}\n`),
      })
      if (values.json) {
        io.stdout.write(`${JSON.stringify(report, null, 2)}\n`)
      } else {
        // Names come from the provider and reasons may quote them: printed escaped (util/printable-text.ts).
        const width = Math.max(8, ...[...report.deleted, ...report.kept, ...report.failed, ...report.skipped].map((decision) => printable(decision.name).length))
        const line = (verb: string, decision: GcDecision | GcSkipped) =>
          io.stdout.write(`${verb.padEnd(12)} ${printable(decision.name).padEnd(width)}  ${printable(`${decision.reason}${'error' in decision && decision.error ? `: ${decision.error}` : ''}`, { multiline: true })}\n`)
        for (const decision of report.deleted) line(report.dryRun ? 'would delete' : 'deleted', decision)
        for (const decision of report.failed) line('FAILED', decision)
        for (const decision of report.kept) line('kept', decision)
        for (const skipped of report.skipped) line('skipped', skipped)
        for (const name of report.forgotten) io.stdout.write(`${'forgot'.padEnd(12)} ${printable(name).padEnd(width)}  lease of a VM that no longer exists\n`)
        const verb = report.dryRun ? 'would delete' : 'deleted'
        const skippedNote = report.skipped.length ? `, ${report.skipped.length} skipped (not vm-pool names)` : ''
        io.stdout.write(`vm-pool gc: ${report.deleted.length} ${verb}, ${report.kept.length} kept${report.failed.length ? `, ${report.failed.length} failed` : ''}${skippedNote}${report.dryRun ? ' (dry run: nothing was deleted)' : ''}\n`)
      }
      return report.failed.length > 0 ? 1 : 0
    } finally {
      await provider.close?.()
    }
  },
}
