import { isSecretName } from '../config/zod-error.js'
import { isVmPoolError } from '../errors.js'
import { createDebug, isDebugEnabled } from '../util/debug.js'
import type { ExecOptions, ExecResult, Vm } from './vm-provider.js'

const NAMESPACE = 'vm-pool:exec'
const debug = createDebug(NAMESPACE)
/** Longest command text in a line: a heredoc or an inline script is cut. */
const MAX_COMMAND_CHARS = 200

/**
 * `DEBUG=vm-pool:exec`: one line per exec — provider, VM, how it ended, duration, the command, its
 * cwd and env. The value of an env variable whose name looks secret (config/zod-error.ts) is never
 * shown, nor is `input`.
 */
export function describeExec(vm: Pick<Vm, 'name' | 'provider'>, command: string | readonly string[], options: ExecOptions, outcome: { result: ExecResult } | { error: unknown }, durationMs: number): string {
  const line = typeof command === 'string' ? command : command.map((word) => (/^[\w@%+=:,./-]+$/.test(word) ? word : JSON.stringify(word))).join(' ')
  const flat = line.replace(/\n/g, '\\n')
  const text = flat.length > MAX_COMMAND_CHARS ? `${flat.slice(0, MAX_COMMAND_CHARS)}… (${flat.length} chars)` : flat
  let how: string
  if ('error' in outcome) how = `failed (${isVmPoolError(outcome.error) ? outcome.error.code : ((outcome.error as Error)?.name ?? 'error')})`
  else if (outcome.result.timedOut) how = 'timed out'
  else how = `exit ${outcome.result.exitCode}${outcome.result.signal ? ` (${outcome.result.signal})` : ''}`
  const extras: string[] = []
  if (options.cwd !== undefined) extras.push(`cwd=${options.cwd}`)
  const env = Object.entries(options.env ?? {}).map(([name, value]) => `${name}=${isSecretName(name) ? '[redacted]' : JSON.stringify(value).slice(1, -1)}`)
  if (env.length > 0) extras.push(`env ${env.join(' ')}`)
  if (options.input !== undefined) extras.push(`stdin ${Buffer.byteLength(options.input)} bytes`)
  if ('result' in outcome) {
    if (outcome.result.stdoutDroppedBytes) extras.push(`stdout: ${outcome.result.stdoutDroppedBytes} bytes dropped`)
    if (outcome.result.stderrDroppedBytes) extras.push(`stderr: ${outcome.result.stderrDroppedBytes} bytes dropped`)
  }
  return `${vm.provider} ${vm.name}: ${how} in ${durationMs} ms: ${text}${extras.length ? `  [${extras.join(', ')}]` : ''}`
}

/** The same Vm whose `exec` writes a `vm-pool:exec` line when it ends (nothing is computed unless that is on). */
export function withExecLog<T extends Vm>(vm: T): T {
  const exec = vm.exec.bind(vm)
  vm.exec = async (command: string | string[], options: ExecOptions = {}): Promise<ExecResult> => {
    if (!isDebugEnabled(NAMESPACE)) return exec(command, options)
    const started = performance.now()
    try {
      const result = await exec(command, options)
      debug(describeExec(vm, command, options, { result }, Math.round(performance.now() - started)))
      return result
    } catch (error) {
      debug(describeExec(vm, command, options, { error }, Math.round(performance.now() - started)))
      throw error
    }
  }
  return vm
}
