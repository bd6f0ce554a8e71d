/**
 * A small client for `vm-pool protocol` (docs/protocol.md), used by the protocol tests and the bench:
 * spawns the real helper (`node dist/cli/main.js protocol`) and speaks JSON lines to it. Plain erasable
 * TypeScript, so the bench runs it under Node's type stripping too.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { dirname, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { childEnded } from './child-ended.ts'

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
export const CLI = join(REPO, 'dist/cli/main.js')

export interface ProtocolError {
  name: 'VmPoolError'
  code: string
  message: string
  hint?: string
  vm?: string
  operation?: string
  details?: Record<string, unknown>
}

export interface ProtocolEvent {
  id: number | string
  event: 'stdout' | 'stderr'
  data: string
}

/** An `ok: false` answer, as an Error carrying the helper's serialized VmPoolError. */
export class ProtocolRequestError extends Error {
  readonly error: ProtocolError
  constructor(error: ProtocolError) {
    super(`${error.code}: ${error.message}`)
    this.error = error
  }
}

export interface HelperOptions {
  env?: NodeJS.ProcessEnv
  args?: string[]
  /** Spawn through this command instead of `node dist/cli/main.js` (argv of a wrapper before the CLI). */
  wrapper?: string[]
}

export class ProtocolClient {
  readonly child: ChildProcessWithoutNullStreams
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** Every line the helper wrote, parsed, in order. */
  readonly messages: Record<string, unknown>[] = []
  stderr = ''
  #nextId = 1
  readonly #waiting = new Map<number | string, { resolve: (value: unknown) => void; reject: (error: Error) => void; onEvent?: (event: ProtocolEvent) => void }>()

  constructor(options: HelperOptions = {}) {
    const argv = [...(options.wrapper ?? []), process.execPath, CLI, 'protocol', ...(options.args ?? [])]
    this.child = spawn(argv[0]!, argv.slice(1), { env: { ...process.env, ...options.env }, stdio: ['pipe', 'pipe', 'pipe'] })
    this.child.stderr.setEncoding('utf8').on('data', (chunk: string) => (this.stderr += chunk))
    this.exited = childEnded(this.child)
    createInterface({ input: this.child.stdout }).on('line', (line) => this.#onLine(line))
    void this.exited.then(() => {
      for (const waiter of this.#waiting.values()) waiter.reject(new Error(`the helper exited before answering; stderr: ${this.stderr}`))
      this.#waiting.clear()
    })
  }

  /** Send one request and wait for its answer (`ok: true` → result, `ok: false` → ProtocolRequestError). */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- answers are checked by the tests' expectations
  request<T = Record<string, any>>(op: string, params: Record<string, unknown> = {}, onEvent?: (event: ProtocolEvent) => void): Promise<T> {
    const id = this.#nextId++
    return this.requestWithId<T>(id, op, params, onEvent)
  }

  requestWithId<T>(id: number | string, op: string, params: Record<string, unknown>, onEvent?: (event: ProtocolEvent) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#waiting.set(id, { resolve: resolve as (value: unknown) => void, reject, onEvent })
      this.sendRaw(JSON.stringify({ id, op, ...params }))
    })
  }

  /** Write a raw line (for malformed-input tests). */
  sendRaw(line: string): void {
    this.child.stdin.write(`${line}\n`)
  }

  nextId(): number {
    return this.#nextId++
  }

  hello(pool: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    return this.request('hello', { protocol: 1, client: 'vm-pool tests', pool, ...extra })
  }

  /** Close stdin, as a runner that ends does, and wait for the helper to exit. */
  async close(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    this.child.stdin.end()
    return this.exited
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    try {
      this.child.kill(signal)
    } catch {
      // gone
    }
  }

  #onLine(line: string): void {
    const message = JSON.parse(line) as Record<string, unknown> & { id: number | string | null }
    this.messages.push(message)
    const waiter = message.id === null ? undefined : this.#waiting.get(message.id)
    if (!waiter) return
    if (typeof message.event === 'string') {
      waiter.onEvent?.(message as unknown as ProtocolEvent)
      return
    }
    this.#waiting.delete(message.id!)
    if (message.ok === true) waiter.resolve(message.result)
    else waiter.reject(new ProtocolRequestError(message.error as ProtocolError))
  }
}
