import { VmPoolError } from '../errors.js'
import { runProcess } from './process-runner.js'
import type { ExecOptions, ExecResult } from './exec-types.js'
import type { SshTransport } from './ssh-transport.js'

/** What a runner passes on to the program it runs: no cwd or env, those belong to the command line. */
export type CommandRunOptions = Pick<ExecOptions, 'input' | 'timeoutMs' | 'signal' | 'onStdout' | 'onStderr' | 'maxOutputBytes'>

/** Runs a VM manager's CLI (`multipass`, `orbctl`) on this machine or on a remote host. */
export interface CommandRunner {
  /** Where the CLI runs, for messages: `this machine` or `user@host:port`. */
  readonly where: string
  /** Run argv; a non-zero exit resolves. A CLI that is not installed rejects with VMPOOL_PROVIDER_UNAVAILABLE. */
  run(argv: string[], options?: CommandRunOptions): Promise<ExecResult>
  close(): Promise<void>
}

export interface LocalCommandRunnerOptions {
  provider: string
  /** What to try when the binary is missing, e.g. `install Multipass (snap install multipass)`. */
  missingHint: string
}

/** The CLI on this machine, via `runProcess` (own process group, killed on timeout/abort). */
export function createLocalCommandRunner(options: LocalCommandRunnerOptions): CommandRunner {
  return {
    where: 'this machine',
    async run(argv, runOptions = {}) {
      const [file, ...args] = argv
      if (file === undefined) throw new Error('createLocalCommandRunner: empty argv')
      try {
        // process.env read per call: tests and users may change PATH between calls.
        return await runProcess(file, args, { ...runOptions, env: process.env, provider: options.provider })
      } catch (error) {
        const cause = (error as { cause?: NodeJS.ErrnoException }).cause
        if (cause?.code === 'ENOENT' || cause?.code === 'EACCES') {
          throw new VmPoolError({
            code: 'VMPOOL_PROVIDER_UNAVAILABLE',
            provider: options.provider,
            message: `${file} is not installed or not executable on this machine (${cause.code})`,
            hint: options.missingHint,
            cause: error,
          })
        }
        throw error
      }
    },
    async close() {},
  }
}

export interface SshCommandRunnerOptions {
  provider: string
  /** The CLI's name, to recognise "command not found" from the remote shell. */
  binary: string
  missingHint: string
}

/**
 * The CLI on another machine over one persistent ssh2 connection (the Multipass host needs no agent,
 * only sshd). argv is quoted word by word (`toShellLine`), so nothing reaches the remote
 * login shell unescaped; timeouts and aborts kill the remote process group (SshTransport).
 */
export function createSshCommandRunner(transport: SshTransport, options: SshCommandRunnerOptions): CommandRunner {
  const notFound = new RegExp(`(^|\\W)${escapeRegExp(options.binary)}: (command )?not found`, 'm')
  return {
    where: transport.target,
    async run(argv, runOptions = {}) {
      const result = await transport.exec(argv, runOptions)
      if (result.exitCode === 127 && notFound.test(result.stderr)) {
        throw new VmPoolError({
          code: 'VMPOOL_PROVIDER_UNAVAILABLE',
          provider: options.provider,
          message: `${options.binary} is not installed (not on PATH) on ${transport.target}`,
          hint: options.missingHint,
        })
      }
      return result
    },
    async close() {
      await transport.close()
    },
  }
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}
