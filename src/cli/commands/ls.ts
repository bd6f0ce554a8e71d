import { formatDuration } from '../../pool/duration.js'
import { listVms } from '../../pool/vm-listing.js'
import { createProvider } from '../../providers/provider-registry.js'
import { printable } from '../../util/printable-text.js'
import { getStateDir } from '../../util/state-dir.js'
import { PROVIDER_OPTION, getProviderName, getProviderOptions, parseCommandArgs, UsageError, type CliCommand } from '../cli-command.js'

export const lsCommand: CliCommand = {
  name: 'ls',
  summary: 'list VMs with their lease state, owner and age',
  help: `Usage: vm-pool ls [--provider NAME] [--json]

Every VM the provider sees, joined with the lease store (this host's lease file in VM_POOL_STATE_DIR, or
the PostgreSQL database in VM_POOL_LEASE_STORE, whose password is never printed): lease state (booting, leased, idle,
deleting, or - when no vm-pool lease knows it), the holder's pid and whether it is alive, the run id
and the age. Leases whose VM the provider does not list show the VM state "missing". An owner on
another host shows as PID@HOST (other host). With a PostgreSQL lease store (VM_POOL_LEASE_STORE) it is
judged by its heartbeat; with the lease file its liveness cannot be checked from here, so it counts
as alive, and \`vm-pool gc --assume-dead-host HOST\` collects its VMs once you know it is gone.

Options:
  -p, --provider NAME   provider (default: VM_POOL_PROVIDER, else qemu)
      --json            print the rows as JSON on stdout
`,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, { ...PROVIDER_OPTION, json: { type: 'boolean' } })
    if (positionals.length > 0) throw new UsageError(`unexpected arguments: ${positionals.join(' ')}`)
    const provider = await createProvider(getProviderName(values.provider, io.env), getProviderOptions(io.env))
    try {
      const rows = await listVms({ provider, stateDir: getStateDir(undefined, io.env) })
      if (values.json) {
        io.stdout.write(`${JSON.stringify(rows, null, 2)}\n`)
        return 0
      }
      const table = [
        ['NAME', 'VM', 'LEASE', 'OWNER', 'RUN', 'AGE'],
        ...rows.map((row) => [
          row.name,
          row.vmState,
          row.lease ?? '-',
          row.owner ? (row.owner.otherHost ? `${row.owner.pid}@${row.owner.host} (other host)` : `${row.owner.pid}${row.owner.alive ? '' : ' (dead)'}`) : '-',
          row.runId ?? '-',
          row.ageMs === null ? '-' : formatDuration(row.ageMs),
        ]),
      ]
      // VM names and run ids come from providers and lease files: printed escaped (util/printable-text.ts).
      for (const cells of table) cells.forEach((cell, column) => (cells[column] = printable(cell)))
      const widths = table[0]!.map((_, column) => Math.max(...table.map((cells) => cells[column]!.length)))
      for (const cells of table) io.stdout.write(`${cells.map((cell, column) => (column === cells.length - 1 ? cell : cell.padEnd(widths[column]!))).join('  ')}\n`)
      if (rows.length === 0) io.stdout.write(`(no VMs for provider ${provider.name})\n`)
      return 0
    } finally {
      await provider.close?.()
    }
  },
}
