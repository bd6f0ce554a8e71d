import type { GithubWorkflowResult } from '../../workflow/github/run-github-workflow.js'

/**
 * The runs `vm-pool serve` accepted: at most `maxActive` at a time, at most `maxQueued` waiting (past
 * that `submit` refuses and the server answers 429), and the last `maxRetained` finished ones kept
 * for `GET /runs`. Closing cancels what waits and aborts what runs (always() steps still run, VMs
 * are released) and resolves when everything has stopped.
 */

export type WebhookRunStatus = 'queued' | 'running' | 'success' | 'failure' | 'cancelled' | 'error'

export interface WebhookRun {
  id: string
  delivery: string
  event: string
  ref?: string
  sha?: string
  /** Where the workflow files and the checkout came from. */
  from: 'commit' | 'working-tree'
  /** The workflow files this event starts. */
  workflows: string[]
  status: WebhookRunStatus
  createdAt: string
  startedAt?: string
  finishedAt?: string
  /** Why the run could not run (`status: 'error'`). */
  error?: string
  /** Things to know (a workflow file that did not parse, paths filters not evaluated). */
  notes: string[]
  results?: GithubWorkflowResult[]
}

export type RunExecutor = (run: WebhookRun, signal: AbortSignal) => Promise<GithubWorkflowResult[]>

export interface WebhookRunQueueOptions {
  /** Runs executing at once. */
  maxActive: number
  /** Runs waiting; one more is refused. */
  maxQueued: number
  /** Finished runs kept for GET /runs. @default 100 */
  maxRetained?: number
}

export class WebhookRunQueue {
  readonly #options: Required<WebhookRunQueueOptions>
  readonly #runs = new Map<string, WebhookRun>()
  readonly #waiting: Array<{ run: WebhookRun; execute: RunExecutor }> = []
  readonly #active = new Set<Promise<void>>()
  readonly #controller = new AbortController()
  #counter = 0
  #closed = false

  constructor(options: WebhookRunQueueOptions) {
    this.#options = { maxRetained: 100, ...options }
  }

  /** Queue a run; undefined when the queue is full or closed. */
  submit(init: Omit<WebhookRun, 'id' | 'status' | 'createdAt'>, execute: RunExecutor): WebhookRun | undefined {
    if (this.#closed) return undefined
    if (this.#active.size >= this.#options.maxActive && this.#waiting.length >= this.#options.maxQueued) return undefined
    const run: WebhookRun = { ...init, id: String(++this.#counter), status: 'queued', createdAt: new Date().toISOString() }
    this.#runs.set(run.id, run)
    this.#waiting.push({ run, execute })
    this.#pump()
    return run
  }

  list(): WebhookRun[] {
    return [...this.#runs.values()].reverse()
  }

  get(id: string): WebhookRun | undefined {
    return this.#runs.get(id)
  }

  get activeCount(): number {
    return this.#active.size
  }

  get queuedCount(): number {
    return this.#waiting.length
  }

  /** Resolves once nothing waits or runs. */
  async idle(): Promise<void> {
    while (this.#active.size > 0) await Promise.allSettled([...this.#active])
  }

  async close(): Promise<void> {
    this.#closed = true
    for (const { run } of this.#waiting.splice(0)) {
      run.status = 'cancelled'
      run.finishedAt = new Date().toISOString()
    }
    this.#controller.abort(new Error('vm-pool serve is stopping'))
    await this.idle()
  }

  #pump(): void {
    while (this.#active.size < this.#options.maxActive && this.#waiting.length > 0) {
      const { run, execute } = this.#waiting.shift()!
      run.status = 'running'
      run.startedAt = new Date().toISOString()
      const done = execute(run, this.#controller.signal).then(
        (results) => {
          run.results = results
          run.status = this.#controller.signal.aborted ? 'cancelled' : results.every((result) => result.status === 'success') ? 'success' : 'failure'
        },
        (error: unknown) => {
          run.status = 'error'
          run.error = (error as Error)?.message ?? String(error)
        },
      )
      const tracked = done.finally(() => {
        run.finishedAt = new Date().toISOString()
        this.#active.delete(tracked)
        this.#prune()
        this.#pump()
      })
      this.#active.add(tracked)
    }
  }

  #prune(): void {
    const finished = [...this.#runs.values()].filter((run) => run.finishedAt !== undefined)
    for (const run of finished.slice(0, Math.max(0, finished.length - this.#options.maxRetained))) this.#runs.delete(run.id)
  }
}
