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
 * - Or `\x1evm-pool-pid <pid> <pgid> <start>` on a connection that carries one command at a time and whose
 *   server process leads the shell's group (dropbear: one process per connection, in a session of its
 *   own). Making the shell a leader costs `setsid` and a second `sh` (two program starts, about 25 ms
 *   of an emulated CPU each exec), so there the command stays in that group, and the kill ends every
 *   process of the group except its leader (the server) that started at or after the shell (`<start>`,
 *   clock ticks since boot): the command, its children and its orphans, never a background process an
 *   earlier command left on that connection.
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

/** Where a kill goes: the group `pid` leads, or the members of `group` (not its leader) started at or after `since`. */
export interface KillTarget {
  pid: number
  group?: { id: number; since: number } | undefined
}

/**
 * The script sent as the channel's command. The pid preamble may cost two extra process starts (slow on
 * an emulated guest): only `killable` commands (with a timeout or an AbortSignal) get it.
 * `oneCommandPerConnection`: nothing else runs on this connection while the command does (the transport's
 * maxChannels is 1), so a server-led group of the connection may stand in for a group of its own.
 */
export function buildSshExecScript(command: string | readonly string[], options: Pick<ExecOptions, 'cwd' | 'env'>, killable: boolean, oneCommandPerConnection = false): string {
  const payload = `trap 'printf "${EXIT_MARKER.replace('\u001e', '\\036')}%s\\n" "$?" >&2' EXIT\n${buildShellScript(command, options)}`
  if (!killable) return payload
  const marker = PID_MARKER.replace('\u001e', '\\036')
  // In a function: `set --` splits /proc/$$/stat (fields after the `(comm)`: $2 ppid, $3 pgrp, ${20} start
  // time) without touching the script's own arguments. Returns 1 when the shell must become a leader.
  const pidLine = [
    `vm_pool_pid_line() { if ! read -r vm_pool_stat 2>/dev/null </proc/$$/stat; then printf '${marker}%s\\n' "$$" >&2; return 0; fi`,
    '  set -- ${vm_pool_stat##*) }',
    `  if [ "$3" = "$$" ]; then printf '${marker}%s\\n' "$$" >&2; return 0; fi`,
    `  if [ ${oneCommandPerConnection ? 1 : 0} = 1 ] && [ "$2" = "$3" ] && [ -n "\${20}" ]; then printf '${marker}%s %s %s\\n' "$$" "$3" "\${20}" >&2; return 0; fi`,
    `  printf '${marker}%s\\n' "$$" >&2; return 1; }`,
  ].join('\n')
  return [
    pidLine,
    `vm_pool_pid_line || ! command -v setsid >/dev/null 2>&1 || exec setsid /bin/sh -c ${quoteShellArg(payload)}`,
    // The user's command sees neither.
    'unset vm_pool_stat; unset -f vm_pool_pid_line',
    payload,
  ].join('\n')
}

/** Kill the process group led by `pid` (or just `pid` if it leads none), or a shared group's members (`KillTarget`); run on a channel of its own. */
export function remoteKillCommand(target: number | KillTarget): string {
  const { pid, group } = typeof target === 'number' ? { pid: target, group: undefined } : target
  const isPid = (value: number) => Number.isInteger(value) && value > 0
  if (!isPid(pid)) throw new Error(`remoteKillCommand: not a pid: ${pid}`)
  if (group && (!isPid(group.id) || !Number.isInteger(group.since) || group.since < 0)) throw new Error(`remoteKillCommand: not a group: ${JSON.stringify(group)}`)
  if (group === undefined) return `kill -9 -${pid} 2>/dev/null || kill -9 ${pid} 2>/dev/null; exit 0`
  // Up to three passes: a process may fork while the first one runs.
  return [
    `g=${group.id}; t=${group.since}`,
    'for n in 1 2 3; do',
    '  f=',
    '  for s in /proc/[0-9]*/stat; do',
    '    read -r l 2>/dev/null < "$s" || continue',
    '    p=${l%% *}',
    '    set -- ${l##*) }',
    '    [ "$3" = "$g" ] && [ "$p" != "$g" ] && [ "${20:-0}" -ge "$t" ] && kill -9 "$p" 2>/dev/null && f=1',
    '  done',
    '  [ -n "$f" ] || break',
    'done',
    'exit 0',
  ].join('\n')
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
  readonly #onPid: (target: KillTarget | undefined) => void
  readonly #onText: (text: string) => void

  /**
   * `killable`: the script starts with the pid line (`buildSshExecScript`). `onPid` is called once:
   * with the pid, or undefined when no pid line came in the first PID_SEARCH_MAX_BYTES or before the end.
   */
  constructor(killable: boolean, onPid: (target: KillTarget | undefined) => void, onText: (text: string) => void) {
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
        this.#onPid(parseKillTarget(line.slice(PID_MARKER.length)))
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

/** `<pid>` or `<pid> <pgid> <start>` from the pid line; undefined when it is neither. */
function parseKillTarget(text: string): KillTarget | undefined {
  const fields = text.trim().split(' ').map(Number)
  if (!fields.every((value) => Number.isInteger(value) && value >= 0) || !(fields[0]! > 0)) return undefined
  if (fields.length === 1) return { pid: fields[0]! }
  if (fields.length === 3 && fields[1]! > 0) return { pid: fields[0]!, group: { id: fields[1]!, since: fields[2]! } }
  return undefined
}

/** `128 + n` exit codes for a command ended by a signal the server named. */
export function signalNumber(signal: string | undefined): number {
  const numbers: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 }
  return (signal && numbers[signal]) || 0
}
