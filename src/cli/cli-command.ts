import { parseArgs, type ParseArgsConfig } from 'node:util'

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

/** `node:util` parseArgs with errors turned into UsageError (no stack, exit 2). */
export function parseCommandArgs<T extends OptionsConfig>(args: string[], options: T, allowPositionals = true) {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true })
  } catch (error) {
    throw new UsageError((error as Error).message)
  }
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
