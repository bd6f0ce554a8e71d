import type { Readable } from 'node:stream'
import { StringDecoder } from 'node:string_decoder'
import type { ClientChannel } from 'ssh2'
import { createDebug } from '../util/debug.js'
import { scaleTimeout } from '../util/timeouts.js'
import type { ExecOptions } from './exec-types.js'
import { OutputCapture } from './output-capture.js'
import type { ChannelSlot } from './ssh-connection-pool.js'
import { SshStderrParser, type KillTarget } from './ssh-exec-protocol.js'

/** After killing a timed-out or aborted command, how long its channel may take to close before we close it. */
export const EXEC_KILL_GRACE_MS = 5_000

const debug = createDebug('vm-pool:ssh')

/** How one command's bytes travel, beyond `ExecOptions`. */
export interface ChannelIo {
  /** Keep stdout as bytes (`execBuffer`, `getFile`) instead of text. */
  keepBytes: boolean
  /** Streamed to stdin instead of `options.input` (a directory's tar), with backpressure. */
  stdin?: Readable | undefined
  /** Every stdout chunk as raw bytes, awaited before more is read (stdout is then not kept). A rejection closes the channel. */
  onStdoutData?: ((chunk: Buffer) => Promise<void>) | undefined
}

export interface ChannelOutcome {
  /** Empty with `onStdoutData`. */
  stdout: OutputCapture
  stderr: OutputCapture
  /** The status the `\x1evm-pool-exit` line reported (ssh-exec-protocol.ts), if it came. */
  reportedExit: number | undefined
  /** What `stdin` or `onStdoutData` failed with: the run fails with it. */
  ioError: unknown
  /**
   * The kill started for a timeout or abort (none: undefined), settled once it is done. The connection must carry nothing else
   * until then: on a server-led group (dropbear) the kill ends every member started after the command's shell,
   * and a next command on that connection would be one.
   */
  killDone: Promise<void> | undefined
}

export interface CollectOptions {
  options: ExecOptions
  io: ChannelIo
  maxOutputBytes: number
  /** The command prints its pid line first (`buildSshExecScript(..., killable)`). */
  killable: boolean
  /** Kills the remote process group (a second channel); resolves when done or failed. */
  killRemote(target: KillTarget): Promise<void>
  /** Receives the function that kills the command (timeout, abort): the group, then the channel after EXEC_KILL_GRACE_MS. */
  armKill(kill: () => void): void
  /** For DEBUG lines. */
  target: string
  reason(): string | undefined
}

/**
 * Stream one exec channel until it closes: stdout into a bounded capture (or to `onStdoutData`),
 * stderr through the marker parser into another, stdin from `input` or a stream.
 */
export function collectChannel(channel: ClientChannel, collect: CollectOptions): Promise<ChannelOutcome> {
  const { options, io, killable } = collect
  return new Promise((resolve) => {
    const stdout = new OutputCapture(collect.maxOutputBytes)
    const stderr = new OutputCapture(collect.maxOutputBytes)
    const stdoutDecoder = new StringDecoder('utf8')
    let ioError: unknown
    let pidKnown: (target: KillTarget | undefined) => void = () => {}
    const pid = new Promise<KillTarget | undefined>((resolvePid) => (pidKnown = resolvePid))
    const stderrParser = new SshStderrParser(killable, (value) => pidKnown(value), (text) => {
      stderr.push(text)
      options.onStderr?.(text)
    })
    let closed = false
    let killing = false
    let killDone: Promise<void> | undefined
    let graceTimer: NodeJS.Timeout | undefined
    const emitStdout = (text: string) => {
      if (text !== '') options.onStdout?.(text)
    }
    const failIo = (error: unknown) => {
      ioError ??= error
      if (!closed) channel.close()
    }

    /** The consumer's work on the last chunk: the run ends only once it is done. */
    let consumed: Promise<void> = Promise.resolve()
    channel.on('data', (data: Buffer) => {
      if (io.onStdoutData) {
        if (ioError !== undefined) return
        channel.pause()
        consumed = io.onStdoutData(data).then(
          () => void channel.resume(),
          (error: unknown) => {
            channel.resume()
            failIo(error)
          },
        )
        return
      }
      stdout.push(data)
      if (options.onStdout) emitStdout(stdoutDecoder.write(data))
    })
    channel.stderr.on('data', (data: Buffer) => stderrParser.push(data))
    collect.armKill(() => {
      if (killing || closed) return
      killing = true
      debug('%s on %s: killing the remote command', collect.reason(), collect.target)
      killDone = (async () => {
        const known = await pid
        if (!closed && known !== undefined) await collect.killRemote(known)
        if (!closed) graceTimer = setTimeout(() => channel.close(), EXEC_KILL_GRACE_MS)
      })()
    })
    channel.once('close', () => {
      closed = true
      pidKnown(undefined)
      clearTimeout(graceTimer)
      io.stdin?.unpipe(channel)
      const reportedExit = stderrParser.end()
      if (options.onStdout) emitStdout(stdoutDecoder.end())
      void consumed.then(() => resolve({ stdout, stderr, reportedExit, ioError, killDone }))
    })
    channel.on('error', (error: Error) => debug('channel error on %s: %s', collect.target, error.message))
    if (io.stdin) {
      io.stdin.once('error', failIo)
      io.stdin.pipe(channel)
    } else if (options.input !== undefined) channel.end(options.input)
    else channel.end()
  })
}

/**
 * Give the channel back once the kill of its command is done. On a one-command connection (`soleChannel`,
 * where the kill may target the server-led group) a kill not done within EXEC_KILL_GRACE_MS (a stuck guest)
 * costs the connection instead: it is closed, and the next command gets a new one (a new server process, so
 * no group a late kill could still reach).
 */
export async function releaseAfterKill(slot: ChannelSlot, killDone: Promise<void>, soleChannel: boolean): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const late = await Promise.race([
    killDone.then(() => false),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), scaleTimeout(EXEC_KILL_GRACE_MS))
      timer.unref()
    }),
  ])
  clearTimeout(timer)
  if (late && soleChannel) await slot.connection.close().catch(() => {})
  slot.release()
}
