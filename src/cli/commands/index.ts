import type { CliCommand } from '../cli-command.js'

/** Every command, lazily imported so `vm-pool --help` stays fast. Add one line per command. */
export const commands: Record<string, () => Promise<CliCommand>> = {
  ls: async () => (await import('./ls.js')).lsCommand,
  gc: async () => (await import('./gc.js')).gcCommand,
  warm: async () => (await import('./warm.js')).warmCommand,
  run: async () => (await import('./run.js')).runCommand,
  image: async () => (await import('./image.js')).imageCommand,
  doctor: async () => (await import('./doctor.js')).doctorCommand,
  serve: async () => (await import('./serve.js')).serveCommand,
  history: async () => (await import('./history.js')).historyCommand,
  protocol: async () => (await import('./protocol.js')).protocolCommand,
}
