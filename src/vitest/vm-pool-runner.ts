import type { PoolOptions, PoolRunnerInitializer, PoolWorker, WorkerRequest } from 'vitest/node'
import type { VitestVmPoolRun } from './vitest-vm-pool-run.js'
import { WORKER_CONTEXT_KEY, type VmPoolWorkerContext } from './worker-context.js'

/** Vitest's `ForksPoolWorker` / `ThreadsPoolWorker`, as far as the subclass uses them (methods, so they can be overridden). */
interface BasePoolWorker {
  readonly name: string
  on(event: string, callback: (...args: any[]) => void): void
  off(event: string, callback: (...args: any[]) => void): void
  send(message: WorkerRequest): void
  start(): Promise<void>
  stop(): Promise<void>
  deserialize(data: unknown): unknown
}
type PoolWorkerClass = new (options: PoolOptions) => BasePoolWorker

/** Pool names as Vitest sees them (`task.worker`); a shared runner is only reused when the names match. */
export const VM_POOL_RUNNER_NAMES = { forks: 'vm-pool-forks', threads: 'vm-pool-threads' } as const

/**
 * A `PoolRunnerInitializer` whose workers are Vitest's own forks/threads workers plus one thing:
 * the VM of their slot. The slot (`poolId`) is only known when Vitest sends `start`, so that is
 * when the worker asks the run for the slot's VM; `run` requests wait for the binding and carry
 * it to the worker in `providedContext`. The binding lives here, in the main process, not in a
 * worker-scoped fixture: with `isolate: true` every file gets a new worker process.
 */
export function createVmPoolRunner(run: VitestVmPoolRun, base: PoolWorkerClass, kind: 'forks' | 'threads'): PoolRunnerInitializer {
  const name = VM_POOL_RUNNER_NAMES[kind]

  class VmPoolWorker extends base implements PoolWorker {
    override readonly name = name
    private readonly bindsVm: boolean
    private binding: Promise<VmPoolWorkerContext> | undefined
    private stopping = false
    /** Requests leave in order: a `run` held back for the binding must not be overtaken. */
    private outbox: Promise<void> = Promise.resolve()

    constructor(options: PoolOptions) {
      super(options)
      // `vitest list` only collects: no test runs, no VM needed.
      this.bindsVm = options.method === 'run'
    }

    override async start(): Promise<void> {
      await super.start()
      // Vitest stops a worker with stop(); any other exit (process.exit in a test, a segfault, OOM)
      // leaves the slot's VM in an unknown state.
      this.on('exit', () => {
        if (this.stopping || !this.binding) return
        this.binding.then((context) => run.workerExited(context, true)).catch(() => {})
      })
    }

    override async stop(): Promise<void> {
      this.stopping = true
      try {
        await super.stop()
      } finally {
        this.binding?.then((context) => run.workerExited(context, false)).catch(() => {})
      }
    }

    override send(message: WorkerRequest): void {
      if (!this.bindsVm) return super.send(message)
      if (message.type === 'start') {
        // A slot id can come back before the previous worker of that slot finished stopping;
        // the binding is per slot in the run, so that is fine: both see the same VM.
        this.binding ??= run.bindWorker(message.poolId)
      }
      if ((message.type === 'run' || message.type === 'collect') && this.binding) {
        const binding = this.binding
        this.outbox = this.outbox.then(async () => {
          const context = await binding
          if (message.type === 'run') run.recordFiles(context, message.context.files.length)
          this.deliver({
            ...message,
            context: { ...message.context, providedContext: { ...message.context.providedContext, [WORKER_CONTEXT_KEY]: context } },
          })
        })
        return
      }
      this.outbox = this.outbox.then(() => this.deliver(message))
    }

    private deliver(message: WorkerRequest): void {
      try {
        super.send(message)
      } catch {
        // The worker went away while the request waited for its VM; Vitest reports the exit itself.
      }
    }
  }

  return {
    name,
    createPoolWorker: (options) => new VmPoolWorker(options),
  }
}
