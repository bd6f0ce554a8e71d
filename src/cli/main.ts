#!/usr/bin/env node
import { readFileSync, realpathSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import { isVmPoolError } from '../errors.js'
import { closest } from '../util/closest-match.js'
import { isDebugEnabled } from '../util/debug.js'
import { printable } from '../util/printable-text.js'
import { UsageError, type CliIo } from './cli-command.js'
import { endQuietlyOnClosedOutput } from './closed-output.js'
import { commands } from './commands/index.js'

const COMMAND_SUMMARIES: Record<string, string> = {
  run: 'run workflow files, each on exactly one VM',
  ls: 'list VMs with their lease state, owner and age',
  gc: 'delete orphaned VMs left by crashed or interrupted runs',
  warm: 'boot idle VMs ahead of time for later runs to adopt',
  image: 'build the default QEMU guest image',
  doctor: 'say which providers are usable here, and why not',
  serve: 'run GitHub workflows on VMs for GitHub webhook events (push, pull_request)',
  history: 'success rates, flaky and slow steps of the workflows run so far',
  ssh: 'a shell in a VM, or run one command there',
  rm: 'delete the named VMs (and their leases)',
  protocol: 'serve the pool to another test runner (pytest, ...) as JSON lines on stdio',
}

function getVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
  return pkg.version
}

function mainHelp(): string {
  const names = Object.keys(commands)
  const width = Math.max(...names.map((name) => name.length), 6)
  const lines = names.map((name) => `  ${name.padEnd(width)}  ${COMMAND_SUMMARIES[name] ?? ''}`)
  return `Usage: vm-pool <command> [options]

Pooled real VMs for test runners.

Commands:
${lines.join('\n')}

Options:
  -h, --help     show help (also: vm-pool <command> --help)
  -v, --version  show the version

Environment:
  VM_POOL_PROVIDER          default provider (default: qemu)
  VM_POOL_PROVIDER_OPTIONS  provider options as a JSON object
  VM_POOL_STATE_DIR         where VMs, images and leases are kept (default: ~/.cache/vm-pool)
  VM_POOL_LEASE_STORE       the lease table: postgres://user:password@host/db to share warm VMs
                            between machines (default: the lease file in the state dir)
  VM_POOL_HOST_ID           this machine's name in lease owners (default: the host name)
  VM_POOL_TIMEOUT_SCALE     multiply every timeout (slow machines)
  VM_POOL_HISTORY_DB        the command history file (default: <state dir>/history.sqlite), or off
  VM_POOL_WEBHOOK_SECRET    the GitHub webhook secret of vm-pool serve
  DEBUG=vm-pool*            debug output and stack traces
`
}

export async function main(argv: string[], io: CliIo): Promise<number> {
  const [name, ...rest] = argv
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    io.stdout.write(mainHelp())
    return name === undefined ? 2 : 0
  }
  if (name === '-v' || name === '--version') {
    io.stdout.write(`${getVersion()}\n`)
    return 0
  }
  const load = commands[name]
  if (!load) {
    const names = Object.keys(commands)
    const match = name.startsWith('-') ? undefined : closest(name, names)
    const what = name.startsWith('-') ? 'option' : 'command'
    io.stderr.write(`vm-pool: unknown ${what} ${printable(JSON.stringify(name))}${match ? ` (did you mean ${match}?)` : `; commands: ${names.join(', ')}`}\nRun 'vm-pool --help' for usage.\n`)
    return 2
  }
  const command = await load()
  if (rest.includes('-h') || rest.includes('--help')) {
    io.stdout.write(command.help.endsWith('\n') ? command.help : `${command.help}\n`)
    return 0
  }
  try {
    return await command.run(rest, io)
  } catch (error) {
    return reportError(error, name, io)
  }
}

function reportError(error: unknown, command: string, io: CliIo): number {
  if (error instanceof UsageError) {
    io.stderr.write(`vm-pool ${command}: ${printable(error.message)}\nRun 'vm-pool ${command} --help' for usage.\n`)
    return 2
  }
  // Messages quote input (a workflow's name, a path, an option's value): printed escaped, lines kept.
  if (isDebugEnabled()) io.stderr.write(`${printable((error as Error)?.stack ?? String(error), { multiline: true })}\n`)
  else io.stderr.write(`${printable(isVmPoolError(error) ? error.message : `vm-pool ${command}: ${(error as Error)?.message ?? String(error)}`, { multiline: true })}\n`)
  if (isVmPoolError(error)) {
    const usage = ['VMPOOL_INVALID_OPTIONS', 'VMPOOL_INVALID_NAME', 'VMPOOL_WORKFLOW_INVALID', 'VMPOOL_PROVIDER_UNAVAILABLE', 'VMPOOL_IMAGE_MISSING']
    return usage.includes(error.code) ? 2 : 1
  }
  return 1
}

// Run only as the bin, not when imported by tests.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  const controller = new AbortController()
  let interrupted = 0
  const onSignal = (signal: NodeJS.Signals) => {
    interrupted++
    if (interrupted > 1) process.exit(130)
    process.stderr.write(`\nvm-pool: ${signal}, cleaning up (again to force)\n`)
    controller.abort(new Error(signal))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  // `vm-pool ls | head -1`: a closed stdout ends the command like Ctrl-C does, without a word (see closed-output.ts).
  endQuietlyOnClosedOutput([process.stdout, process.stderr], () => controller.abort(new Error('output closed')))
  const code = await main(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, env: process.env, signal: controller.signal })
  process.exitCode = interrupted > 0 && code === 0 ? 130 : code
}
