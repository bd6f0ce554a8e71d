import { parseArgs, type ParseArgsConfig } from 'node:util'
import { closest } from '../util/closest-match.js'

export interface CliIo {
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream
  env: NodeJS.ProcessEnv
  /** Aborted on SIGINT/SIGTERM: commands stop starting work and clean up. */
  signal: AbortSignal
}

export interface CliCommand {
  name: string
  /** One line for `vm-pool --help`. */
  summary: string
  /** The full `vm-pool <name> --help` text. */
  help: string
  /** Returns the exit code: 0 success, 1 the work failed, 2 bad usage / bad input / provider unavailable. */
  run(args: string[], io: CliIo): Promise<number>
}

/** Bad command-line usage: printed with a pointer to `--help`, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError'
}

export type OptionsConfig = NonNullable<ParseArgsConfig['options']>

/** `node:util` parseArgs with errors turned into UsageError (no stack, exit 2); a mistyped option gets a did-you-mean. */
export function parseCommandArgs<T extends OptionsConfig>(args: string[], options: T, allowPositionals = true) {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true })
  } catch (error) {
    throw new UsageError(describeParseError(error as Error & { code?: string }, options))
  }
}

/** Node's own message for an unknown option is long and ends in an unbalanced quote: say it plainly, with a suggestion. */
function describeParseError(error: Error & { code?: string }, options: OptionsConfig): string {
  // Node's three-line message for `--count -1` (a value starting with a dash) was printed as one line with \n escapes.
  const ambiguous = /^Option '(-[^' ]+)' argument is ambiguous/.exec(error.message)?.[1]
  if (ambiguous !== undefined) return `${ambiguous} needs a value; to give one starting with a dash, write ${ambiguous}=-VALUE`
  const unknown = error.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? /^Unknown option '([^']+)'/.exec(error.message)?.[1] : undefined
  if (unknown === undefined) return error.message.replaceAll('\n', ' ')
  const flag = unknown.replace(/=.*$/, '')
  const known = Object.entries(options).flatMap(([name, option]) => [`--${name}`, ...(option.short ? [`-${option.short}`] : [])])
  // Compare without the dashes, so `--keepvm` finds `--keep-vm` and `-keep-vm` finds it too.
  const bare = (text: string) => text.replace(/^-+/, '').replaceAll('-', '')
  const long = known.filter((name) => name.startsWith('--'))
  const match = long.find((name) => bare(name) === bare(flag)) ?? closest(flag, long)
  return `unknown option ${flag}${match ? ` (did you mean ${match}?)` : ''}`
}

/** Common `--provider NAME` handling: flag, then `VM_POOL_PROVIDER`, then qemu. */
export const PROVIDER_OPTION = { provider: { type: 'string', short: 'p' } } as const

export function getProviderName(value: string | undefined, env: NodeJS.ProcessEnv): string {
  return value ?? env.VM_POOL_PROVIDER ?? 'qemu'
}

/** Provider options from `VM_POOL_PROVIDER_OPTIONS` (JSON), e.g. `{"bootDelayMs":100}`. */
export function getProviderOptions(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const raw = env.VM_POOL_PROVIDER_OPTIONS
  if (!raw) return {}
  try {
    const parsed: unknown = JSON.parse(raw)
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not a JSON object')
    return parsed as Record<string, unknown>
  } catch (error) {
    throw new UsageError(`VM_POOL_PROVIDER_OPTIONS must be a JSON object: ${withoutInputExcerpt((error as Error).message)}`)
  }
}

/**
 * V8's JSON errors can quote a slice of the input (`Unexpected token 'S', "{"token":SUPERSECRE"... is
 * not valid JSON`), and these options hold tokens and private keys: keep only what locates the problem.
 */
function withoutInputExcerpt(message: string): string {
  return message.replace(/^Unexpected token .*? is not valid JSON$/s, 'unexpected token: not valid JSON')
}
