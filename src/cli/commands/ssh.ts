import { spawn } from 'node:child_process'
import { VmPoolError } from '../../errors.js'
import { createProvider } from '../../providers/provider-registry.js'
import type { VmProvider, VmRecord } from '../../providers/vm-provider.js'
import { validateVmName } from '../../util/vm-name.js'
import { PROVIDER_OPTION, getProviderName, getProviderOptions, parseCommandArgs, UsageError, type CliCommand, type CliIo } from '../cli-command.js'

export const sshCommand: CliCommand = {
  name: 'ssh',
  summary: 'a shell in a VM, or run one command there',
  help: `Usage: vm-pool ssh NAME [--provider NAME] [-- command...]

Without a command: an interactive shell in the VM, with a TTY. With one: run it there and exit with
its status. qemu: the system ssh with the VM's key file, port and user; multipass: multipass shell /
exec (local multipassd); orbstack: orbctl run; fake: a shell in the VM's sandbox directory on this host.
Providers without a shell of their own (firecracker, ssh, multipass on a remote host) run a command
through vm-pool's exec; they have no interactive shell.

Options:
  -p, --provider NAME   provider (default: VM_POOL_PROVIDER, else qemu)

Exit status: the command's (or the shell's), 1 the VM was not found, 2 bad usage.
`,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, PROVIDER_OPTION)
    const [rawName, ...command] = positionals
    if (rawName === undefined) throw new UsageError('name the VM: vm-pool ssh NAME [-- command...]')
    const providerName = getProviderName(values.provider, io.env)
    const name = validateVmName(rawName, providerName)
    const provider = await createProvider(providerName, getProviderOptions(io.env))
    try {
      const record = await findRecord(provider, name)
      const local = provider.shell?.(record, command.length > 0 ? command : undefined)
      if (local) return await runLocal(local.argv, { cwd: local.cwd, env: { ...io.env, ...local.env }, interactive: command.length === 0 }, io)
      if (command.length === 0) {
        throw new UsageError(`${provider.name} VMs have no interactive shell here; run one command: vm-pool ssh ${name} --provider ${provider.name} -- COMMAND`)
      }
      const vm = await provider.connect(record)
      try {
        const result = await vm.exec(command, { onStdout: (chunk) => io.stdout.write(chunk), onStderr: (chunk) => io.stderr.write(chunk) })
        return result.exitCode ?? 1
      } finally {
        await vm.close?.()
      }
    } finally {
      await provider.close?.()
    }
  },
}

async function findRecord(provider: VmProvider, name: string): Promise<VmRecord> {
  const info = (await provider.list()).find((candidate) => candidate.name === name)
  if (!info) throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: provider.name, operation: 'ssh', vm: name, message: `no VM named ${name}`, hint: `see the VMs with \`vm-pool ls --provider ${provider.name}\`` })
  if (!info.record) throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: provider.name, operation: 'ssh', vm: name, message: `${name} cannot be reached (state ${info.state}: no record of how to connect)`, hint: `delete it with \`vm-pool rm ${name} --provider ${provider.name}\`` })
  return info.record
}

/** Interactive: the terminal is the child's (stdio inherited). A command: its output goes through `io`. */
function runLocal(argv: string[], options: { cwd?: string | undefined; env: NodeJS.ProcessEnv; interactive: boolean }, io: CliIo): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { cwd: options.cwd, env: options.env, stdio: options.interactive ? 'inherit' : ['inherit', 'pipe', 'pipe'] })
    child.stdout?.on('data', (chunk: Buffer) => io.stdout.write(chunk))
    child.stderr?.on('data', (chunk: Buffer) => io.stderr.write(chunk))
    child.on('error', (error) => reject(new VmPoolError({ code: 'VMPOOL_PROVIDER_UNAVAILABLE', operation: 'ssh', message: `could not run ${argv[0]}: ${error.message}`, cause: error })))
    child.on('close', (code, signal) => resolve(code ?? (signal ? 129 : 1)))
  })
}
