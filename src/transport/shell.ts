import { invalidOptions } from '../errors.js'
import type { ExecOptions } from './exec-types.js'

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
const SAFE_WORD = /^[A-Za-z0-9_@%+=:,./-]+$/

/** POSIX single-quote quoting: the result is one word for `sh`, whatever `arg` contains. */
export function quoteShellArg(arg: string): string {
  if (arg !== '' && SAFE_WORD.test(arg)) return arg
  return `'${arg.replaceAll("'", `'\\''`)}'`
}

/** A string is already a shell line; an argv array becomes one with every word quoted. */
export function toShellLine(command: string | readonly string[]): string {
  if (typeof command === 'string') return command
  if (command.length === 0) throw invalidOptions('exec needs a command: got an empty argv array')
  return command.map((word) => quoteShellArg(String(word))).join(' ')
}

export function validateEnv(env: Record<string, string> | undefined): void {
  for (const name of Object.keys(env ?? {})) {
    if (!ENV_NAME.test(name)) throw invalidOptions(`invalid environment variable name ${JSON.stringify(name)}`)
  }
}

/**
 * One `sh` script that changes directory, exports `env`, then runs the command, for transports that
 * run a single remote shell line (ssh, `multipass exec`, an HTTP execute API).
 * A relative `cwd` resolves against the directory the shell starts in (the user's home).
 */
export function buildShellScript(command: string | readonly string[], options: Pick<ExecOptions, 'cwd' | 'env'> = {}): string {
  validateEnv(options.env)
  const parts: string[] = []
  if (options.cwd !== undefined) parts.push(`cd ${quoteShellArg(options.cwd)} || exit 1`)
  for (const [name, value] of Object.entries(options.env ?? {})) parts.push(`export ${name}=${quoteShellArg(value)}`)
  parts.push(toShellLine(command))
  return parts.join('\n')
}
