import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { VmPoolError } from '../errors.js'
import { createDebug } from '../util/debug.js'
import { InflightRequests, toVmPoolError } from './inflight-requests.js'
import { BadRequest, parseRequest, type EventMessage, type ResponseMessage } from './protocol-messages.js'
import { ProtocolSession } from './protocol-session.js'
import { RunnerWatch } from './runner-watch.js'

const debug = createDebug('vm-pool:protocol')

export interface ServeProtocolOptions {
  /** Requests, one JSON object per line (the helper's stdin). */
  input: NodeJS.ReadableStream & { destroy?(): void }
  /** Responses and events, one JSON object per line (the helper's stdout). */
  output: NodeJS.WritableStream
  env: NodeJS.ProcessEnv
  /** The runner process: the helper stops when it is gone. `hello.pid` replaces it. @default process.ppid */
  parentPid?: number
  /** Aborted (SIGINT/SIGTERM of the helper): stop as if the runner had gone. */
  signal?: AbortSignal
  /** Warnings and why the helper stops (its stderr). */
  log?: (line: string) => void
}

/**
 * `vm-pool protocol`: serve one runner over JSON lines until it goes (docs/protocol.md). Requests run
 * concurrently and are answered by id; `exec` with `stream` sends output events before its answer.
 *
 * The runner is gone when stdin ends (requests already received are answered first, unless the runner died),
 * when its pid stops running, or when stdout breaks. If it did not
 * `drain` first, every VM it held is deleted (`drain({ discard: true })`: their state is unknown, as for a
 * crashed Vitest worker). If this helper itself is killed, the pool's reaper (docs/pool.md) deletes them.
 * Resolves with the exit code: 0, or 1 when a VM could not be deleted.
 */
export async function serveProtocol(options: ServeProtocolOptions): Promise<number> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`))
  let stopping: ((reason: string) => void) | undefined
  const stopped = new Promise<string>((resolve) => (stopping = resolve))
  const stop = (reason: string) => stopping?.(reason)

  let outputBroken = false
  const write = (message: ResponseMessage | EventMessage) => {
    if (outputBroken) return
    options.output.write(`${JSON.stringify(message)}\n`)
  }
  const onOutputError = () => {
    outputBroken = true
    stop('stdout is closed')
  }
  options.output.on('error', onOutputError)

  const watch = new RunnerWatch((pid) => stop(`runner pid ${pid} is gone`))
  watch.watch(options.parentPid ?? process.ppid)
  const session = new ProtocolSession({ env: options.env, version: getVersion(), onRunnerPid: (pid) => watch.watch(pid), warn: (message) => log(`[vm-pool] warning: ${message}`) })

  const inflight = new InflightRequests(write)
  const lines = createInterface({ input: options.input, crlfDelay: Number.POSITIVE_INFINITY })
  lines.on('line', (line) => {
    if (line.trim() === '') return
    let request
    try {
      request = parseRequest(line)
    } catch (error) {
      const bad = error instanceof BadRequest ? error : new BadRequest(null, toVmPoolError(error))
      write({ id: bad.id, ok: false, error: bad.error.toJSON() })
      return
    }
    const { id } = request
    if (request.op === 'cancel') {
      const { target } = request.params
      write({ id, ok: true, result: inflight.cancel(target, new VmPoolError({ code: 'VMPOOL_EXEC_ABORTED', operation: 'cancel', message: `request ${JSON.stringify(target)} was cancelled by the client` })) })
      return
    }
    if (inflight.has(id)) {
      write({ id, ok: false, error: new VmPoolError({ code: 'VMPOOL_INVALID_OPTIONS', operation: request.op, message: `request id ${JSON.stringify(id)} is already in flight`, hint: 'use a new id for every request' }).toJSON() })
      return
    }
    // Everything still running belongs to VMs the drain is about to hand back or delete.
    if (request.op === 'drain') inflight.stopAll(new VmPoolError({ code: 'VMPOOL_EXEC_ABORTED', operation: 'drain', message: 'the client drained the pool while this request ran' }))
    const cancellable = request.op === 'exec' && (request.params.cancellable || request.params.timeoutMs !== undefined)
    inflight.start(id, cancellable, (signal) => session.handle(request, { id, signal, emit: (event, data) => write({ id, event, data }) }))
  })
  // A runner that closed stdin on purpose (a batch: `printf ... | vm-pool protocol`) gets the answers to what it
  // sent; one that died does not wait for them: the watch below stops the helper at once.
  lines.once('close', () => {
    if (!watch.isAlive()) return stop(`runner pid ${watch.pid} is gone`)
    void inflight.settled().then(() => stop('stdin closed'))
  })
  const onAbort = () => stop(`signal (${String(options.signal?.reason ?? 'aborted')})`)
  if (options.signal?.aborted) onAbort()
  options.signal?.addEventListener('abort', onAbort, { once: true })

  const reason = await stopped
  watch.stop()
  options.signal?.removeEventListener('abort', onAbort)
  debug('stopping: %s', reason)
  let code = 0
  if (!session.drained) {
    // The runner went without draining: stop its commands, delete its VMs.
    inflight.stopAll(new VmPoolError({ code: 'VMPOOL_EXEC_ABORTED', operation: 'protocol', message: `the helper is stopping: ${reason}` }))
    log(`vm-pool protocol: ${reason} without a drain; deleting the VMs it held`)
  }
  try {
    await session.drain(!session.drained)
  } catch (error) {
    code = 1
    log(toVmPoolError(error).message)
  }
  await inflight.settled()
  lines.close()
  // A runner that died may leave its end of the pipe open in a child: do not wait for EOF that never comes.
  options.input.destroy?.()
  options.output.off('error', onOutputError)
  return code
}

function getVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
  return pkg.version
}
