import { VmPoolError, isVmPoolError } from '../errors.js'
import type { RequestId, ResponseMessage } from './protocol-messages.js'

interface Entry {
  controller: AbortController
  cancellable: boolean
  /** Answered early (cancelled or stopped while its command could not be killed): its late result is dropped. */
  abandoned: boolean
  done: Promise<void>
}

/**
 * The requests being worked on, each answered exactly once. A cancellable one (an exec the transport can
 * kill: `cancellable` or `timeoutMs`) is aborted and answers when its command is gone. Any other one that is
 * cancelled or stopped is answered at once and abandoned: nobody waits for it (the VM's deletion ends it on a
 * real VM). Plain execs skip the kill preamble, which costs two process starts in an emulated guest (see
 * transport/ssh-transport.ts): that is why cancelling is opt-in.
 */
export class InflightRequests {
  readonly #entries = new Map<RequestId, Entry>()
  readonly #respond: (message: ResponseMessage) => void

  constructor(respond: (message: ResponseMessage) => void) {
    this.#respond = respond
  }

  has(id: RequestId): boolean {
    return this.#entries.has(id)
  }

  start(id: RequestId, cancellable: boolean, work: (signal: AbortSignal | undefined) => Promise<unknown>): void {
    const controller = new AbortController()
    const entry: Entry = { controller, cancellable, abandoned: false, done: Promise.resolve() }
    entry.done = work(cancellable ? controller.signal : undefined).then(
      (result) => this.#answer(entry, { id, ok: true, result: result ?? {} }),
      (error: unknown) => this.#answer(entry, { id, ok: false, error: toVmPoolError(error).toJSON() }),
    )
    this.#entries.set(id, entry)
    void entry.done.finally(() => {
      if (this.#entries.get(id) === entry) this.#entries.delete(id)
    })
  }

  /** Stop one request. Returns whether it was running, and whether its command is being killed. */
  cancel(id: RequestId, reason: VmPoolError): { cancelled: boolean; killed: boolean } {
    const entry = this.#entries.get(id)
    if (!entry || entry.abandoned) return { cancelled: false, killed: false }
    this.#stop(id, entry, reason)
    return { cancelled: true, killed: entry.cancellable }
  }

  /** Stop everything but `except` (a drain stops what runs on the VMs it hands back). */
  stopAll(reason: VmPoolError, except?: RequestId): void {
    for (const [id, entry] of this.#entries) if (id !== except && !entry.abandoned) this.#stop(id, entry, reason)
  }

  /** Every request that is still owed an answer has one. */
  async settled(): Promise<void> {
    for (;;) {
      const pending = [...this.#entries.values()].filter((entry) => !entry.abandoned)
      if (pending.length === 0) return
      await Promise.allSettled(pending.map((entry) => entry.done))
    }
  }

  #stop(id: RequestId, entry: Entry, reason: VmPoolError): void {
    entry.controller.abort(reason)
    if (entry.cancellable) return
    entry.abandoned = true
    this.#respond({ id, ok: false, error: reason.toJSON() })
  }

  #answer(entry: Entry, message: ResponseMessage): void {
    if (!entry.abandoned) this.#respond(message)
  }
}

export function toVmPoolError(error: unknown): VmPoolError {
  if (isVmPoolError(error)) return error
  return new VmPoolError({ code: 'VMPOOL_INTERNAL', operation: 'protocol', message: error instanceof Error ? error.message : String(error), cause: error })
}
