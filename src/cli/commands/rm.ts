import { removeVms } from '../../pool/remove-vms.js'
import { createProvider } from '../../providers/provider-registry.js'
import { getStateDir } from '../../util/state-dir.js'
import { validateVmName } from '../../util/vm-name.js'
import { PROVIDER_OPTION, getProviderName, getProviderOptions, parseCommandArgs, UsageError, type CliCommand } from '../cli-command.js'

export const rmCommand: CliCommand = {
  name: 'rm',
  summary: 'delete the named VMs (and their leases)',
  help: `Usage: vm-pool rm NAME... [--force] [--provider NAME] [--json]

Delete exactly the named VMs and drop their leases: a VM kept with --keep-vm or keep(), a warm VM, one
left by a crashed run. A name is matched whole (unlike gc --prefix). A VM a live process holds (its
lease or its reaper marker names it) is refused unless --force.

Options:
  -p, --provider NAME   provider (default: VM_POOL_PROVIDER, else qemu)
      --force           also delete VMs a live process holds
      --json            print the result as JSON on stdout

Exit status: 0 every named VM deleted, 1 one was refused, missing or failed, 2 bad usage.
`,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, { ...PROVIDER_OPTION, force: { type: 'boolean' }, json: { type: 'boolean' } })
    if (positionals.length === 0) throw new UsageError('name at least one VM: vm-pool rm NAME...')
    const providerName = getProviderName(values.provider, io.env)
    const names = positionals.map((name) => validateVmName(name, providerName))
    const provider = await createProvider(providerName, getProviderOptions(io.env))
    try {
      const result = await removeVms({ provider, names, force: values.force ?? false, stateDir: getStateDir(undefined, io.env) })
      if (values.json) io.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
      else {
        for (const decision of result.deleted) io.stdout.write(`deleted  ${decision.name}  (${decision.reason})\n`)
        for (const decision of result.refused) io.stderr.write(`refused  ${decision.name}: ${decision.reason}\n`)
        for (const decision of result.missing) io.stderr.write(`missing  ${decision.name}: ${decision.reason}\n`)
        for (const decision of result.failed) io.stderr.write(`FAILED   ${decision.name}: ${decision.error}\n`)
      }
      return result.refused.length + result.missing.length + result.failed.length > 0 ? 1 : 0
    } finally {
      await provider.close?.()
    }
  },
}
