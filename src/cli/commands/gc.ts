import { collectGarbage, type GcDecision } from '../../pool/garbage-collector.js'
import { parseDuration } from '../../pool/duration.js'
import { SWEEP_PREFIXES, validatePrefix } from '../../util/vm-name.js'
import { createProvider } from '../../providers/provider-registry.js'
import { getStateDir } from '../../util/state-dir.js'
import { PROVIDER_OPTION, getProviderName, getProviderOptions, parseCommandArgs, UsageError, type CliCommand } from '../cli-command.js'

export const gcCommand: CliCommand = {
  name: 'gc',
  summary: 'delete orphaned VMs left by crashed or interrupted runs',
  help: `Usage: vm-pool gc [--provider NAME] [--dry-run] [--older-than 30m] [--prefix P]... [--all] [--json]

Delete VMs left behind by crashed or interrupted runs. Only VMs whose names start with a sweep
prefix are considered: ${SWEEP_PREFIXES.map((prefix) => `${prefix}-`).join(', ')}, and each --prefix.
Kept: VMs whose lease holder is a live process (never deleted, not even with --all), healthy idle warm
VMs (unless --all), pytest-worker-<pid>-<unix time> VMs whose pid is alive and started before that time,
and VMs younger than --older-than. Everything else is deleted: VMs whose holder died, idle VMs past
their ttl or failing a health check, VMs no lease knows about.

Options:
  -p, --provider NAME   provider (default: VM_POOL_PROVIDER, else qemu)
      --dry-run         decide and print, delete nothing
      --older-than AGE  only delete VMs at least this old: 90s, 30m, 2h, 1d (default: any age)
      --prefix P        also sweep names starting with P- (repeatable)
      --all             also delete healthy idle warm VMs
      --json            print the report as JSON on stdout

Exit status: 0 done, 1 a delete failed, 2 bad usage or provider unavailable.
`,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, {
      ...PROVIDER_OPTION,
      'dry-run': { type: 'boolean' },
      'older-than': { type: 'string' },
      prefix: { type: 'string', multiple: true },
      all: { type: 'boolean' },
      json: { type: 'boolean' },
    })
    if (positionals.length > 0) throw new UsageError(`unexpected arguments: ${positionals.join(' ')}`)
    const olderThanMs = values['older-than'] === undefined ? 0 : parseDuration(values['older-than'], '--older-than')
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
        warn: (message) => io.stderr.write(`vm-pool gc: warning: ${message}\n`),
      })
      if (values.json) {
        io.stdout.write(`${JSON.stringify(report, null, 2)}\n`)
      } else {
        const width = Math.max(8, ...[...report.deleted, ...report.kept, ...report.failed].map((decision) => decision.name.length))
        const line = (verb: string, decision: GcDecision) => io.stdout.write(`${verb.padEnd(12)} ${decision.name.padEnd(width)}  ${decision.reason}${decision.error ? `: ${decision.error}` : ''}\n`)
        for (const decision of report.deleted) line(report.dryRun ? 'would delete' : 'deleted', decision)
        for (const decision of report.failed) line('FAILED', decision)
        for (const decision of report.kept) line('kept', decision)
        for (const name of report.forgotten) io.stdout.write(`${'forgot'.padEnd(12)} ${name.padEnd(width)}  lease of a VM that no longer exists\n`)
        const verb = report.dryRun ? 'would delete' : 'deleted'
        io.stdout.write(`vm-pool gc: ${report.deleted.length} ${verb}, ${report.kept.length} kept${report.failed.length ? `, ${report.failed.length} failed` : ''}${report.dryRun ? ' (dry run: nothing was deleted)' : ''}\n`)
      }
      return report.failed.length > 0 ? 1 : 0
    } finally {
      await provider.close?.()
    }
  },
}
