import { StringDecoder } from 'node:string_decoder'
import type { ExecOptions } from './exec-types.js'
import { buildShellScript, quoteShellArg } from './shell.js'

/**
 * The small protocol a command speaks over an SSH exec channel, on top of SSH itself:
 *
 * - The first line our script prints on stderr for a command that may have to be killed is `\x1evm-pool-pid <pid>`
 *   (the user's shell start-up files may print lines before it, e.g. a login shell's rc noise): the
 *   remote shell's pid, made a process group leader (OpenSSH's sshd does that already, dropbear does
 *   not). SSH channel signals are ignored by dropbear and by OpenSSH before 7.9, so a timeout or an
 *   abort kills that group with a second exec (`remoteKillCommand`), which also ends background
 *   children holding the channel open.
 * - The last stderr line of every command is `\x1evm-pool-exit <status>`: dropbear sometimes closes a
 *   channel without its exit-status when several commands end at once.
 *
 * Both lines are stripped from the stderr the caller sees (`SshStderrParser`).
 */
const PID_MARKER = '\u001evm-pool-pid '
const EXIT_MARKER = '\u001evm-pool-exit '
const EXIT_MARKER_LINE = /^\u001evm-pool-exit (\d+)\n$/
/** Stderr lines before the pid line come from the user's shell start-up files: give up looking for it after this many bytes. */
const PID_SEARCH_MAX_BYTES = 64 * 1024

/** Could `text` (stderr from a 0x1e byte to the end) still grow into the exit marker line? */
function isExitMarkerPrefix(text: string): boolean {
  return EXIT_MARKER.startsWith(text) || /^\u001evm-pool-exit \d*\n?$/.test(text)
}

/**
 * The script sent as the channel's command. The pid preamble costs two extra process starts (slow on
 * an emulated guest): only `killable` commands (with a timeout or an AbortSignal) get it.
 */
export function buildSshExecScript(command: string | readonly string[], options: Pick<ExecOptions, 'cwd' | 'env'>, killable: boolean): string {
  const payload = `trap 'printf "${EXIT_MARKER.replace('\u001e', '\\036')}%s\\n" "$?" >&2' EXIT\n${buildShellScript(command, options)}`
  if (!killable) return payload
  return [
    `printf '${PID_MARKER.replace('\u001e', '\\036')}%s\\n' "$$" >&2`,
    'read -r _ _ _ _ vm_pool_pgid _ 2>/dev/null </proc/$$/stat || vm_pool_pgid=$$',
    `[ "$vm_pool_pgid" = "$$" ] || ! command -v setsid >/dev/null 2>&1 || exec setsid /bin/sh -c ${quoteShellArg(payload)}`,
    payload,
  ].join('\n')
}

/** Kill the process group led by `pid` (or just `pid` if it leads none); run on a channel of its own. */
export function remoteKillCommand(pid: number): string {
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`remoteKillCommand: not a pid: ${pid}`)
  return `kill -9 -${pid} 2>/dev/null || kill -9 ${pid} 2>/dev/null; exit 0`
}

/**
 * Splits a channel's stderr into the markers and the command's own stderr. Anything that may be the
 * start of the exit marker is held back until more arrives or the channel closes.
 */
export class SshStderrParser {
  /** Stderr held while looking for the pid line (undefined once found, or when not killable). */
  #head: Buffer | undefined
  /** Bytes of stderr passed on before the pid line. */
  #searched = 0
  #tail = Buffer.alloc(0)
  readonly #decoder = new StringDecoder('utf8')
  readonly #onPid: (pid: number | undefined) => void
  readonly #onText: (text: string) => void

  /**
   * `killable`: the script starts with the pid line (`buildSshExecScript`). `onPid` is called once:
   * with the pid, or undefined when no pid line came in the first PID_SEARCH_MAX_BYTES or before the end.
   */
  constructor(killable: boolean, onPid: (pid: number | undefined) => void, onText: (text: string) => void) {
    this.#head = killable ? Buffer.alloc(0) : undefined
    this.#onPid = onPid
    this.#onText = onText
  }

  push(data: Buffer): void {
    if (this.#head === undefined) return this.#pushBody(data)
    let head = Buffer.concat([this.#head, data])
    for (;;) {
      const newline = head.indexOf(0x0a)
      if (newline < 0) {
        if (this.#searched + head.length < PID_SEARCH_MAX_BYTES) {
          this.#head = head
          return
        }
        return this.#giveUpOnPid(head)
      }
      const line = head.subarray(0, newline).toString('latin1')
      if (line.startsWith(PID_MARKER)) {
        this.#head = undefined
        const pid = Number(line.slice(PID_MARKER.length))
        this.#onPid(Number.isInteger(pid) && pid > 0 ? pid : undefined)
        if (head.length > newline + 1) this.#pushBody(head.subarray(newline + 1))
        return
      }
      // A line before ours (shell start-up noise): it is the command's stderr as far as the caller knows.
      this.#searched += newline + 1
      this.#pushBody(head.subarray(0, newline + 1))
      head = head.subarray(newline + 1)
      if (this.#searched >= PID_SEARCH_MAX_BYTES) return this.#giveUpOnPid(head)
    }
  }

  #giveUpOnPid(rest: Buffer): void {
    this.#head = undefined
    this.#onPid(undefined)
    if (rest.length > 0) this.#pushBody(rest)
  }

  /** At channel close: flush what was held back; returns the exit status the shell reported, if any. */
  end(): number | undefined {
    if (this.#head !== undefined) this.#giveUpOnPid(this.#head)
    const reported = EXIT_MARKER_LINE.exec(this.#tail.toString('latin1'))
    if (!reported && this.#tail.length > 0) this.#emit(this.#tail)
    this.#tail = Buffer.alloc(0)
    const rest = this.#decoder.end()
    if (rest) this.#onText(rest)
    return reported ? Number(reported[1]) : undefined
  }

  #pushBody(data: Buffer): void {
    const buffer = this.#tail.length > 0 ? Buffer.concat([this.#tail, data]) : data
    const at = buffer.lastIndexOf(0x1e)
    if (at >= 0 && isExitMarkerPrefix(buffer.subarray(at).toString('latin1'))) {
      if (at > 0) this.#emit(buffer.subarray(0, at))
      this.#tail = Buffer.from(buffer.subarray(at))
    } else {
      this.#tail = Buffer.alloc(0)
      this.#emit(buffer)
    }
  }

  #emit(data: Buffer): void {
    const text = this.#decoder.write(data)
    if (text !== '') this.#onText(text)
  }
}

/** `128 + n` exit codes for a command ended by a signal the server named. */
export function signalNumber(signal: string | undefined): number {
  const numbers: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 }
  return (signal && numbers[signal]) || 0
}
