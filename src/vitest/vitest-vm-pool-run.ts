import { VmPoolError, isVmPoolError } from '../errors.js'
import { createPool, type DrainResult, type VmPool } from '../pool/vm-pool.js'
import { createProvider } from '../providers/provider-registry.js'
import type { VmProvider } from '../providers/vm-provider.js'
import { createDebug } from '../util/debug.js'
import { startFreshVmBroker, type FreshVmBroker } from './fresh-vm-broker.js'
import { FreshVmOwners } from './fresh-vm-owners.js'
import type { ResolvedVmPoolOptions } from './vm-pool-options.js'
import { VmPoolReportBuilder, writeVmPoolReport, type VmPoolReport } from './vm-pool-report.js'
import { WorkerBindings } from './worker-bindings.js'
import type { VmPoolWorkerContext } from './worker-context.js'

const debug = createDebug('vm-pool:vitest')

/** How often prewarm says which VMs are still booting. */
export const PREWARM_PROGRESS_INTERVAL_MS = 5_000

/** What `start()` made; the parts below it are built on the pool, which exists only from here on. */
interface StartedRun {
  pool: VmPool
  broker: FreshVmBroker
  bindings: WorkerBindings
  freshVms: FreshVmOwners
}

/**
 * One `vitest run` in the Vitest main process: its lifecycle (start, prewarm, finish) and the
 * calls from the pool runner and the broker, handed to the part that owns each concern — the pool
 * (`createPool`: which VMs exist and who leases them), `WorkerBindings` (slot → VM), `FreshVmOwners`
 * (worker → fresh VMs) and `VmPoolReportBuilder` (the numbers). See docs/vitest.md, "How it works".
 * Found through `getVitestVmPoolRun` (vitest-run-registry.ts).
 */
export class VitestVmPoolRun {
  readonly options: ResolvedVmPoolOptions
  readonly #report = new VmPoolReportBuilder()
  #provider: VmProvider | undefined
  #starting: Promise<StartedRun> | undefined
  #started: StartedRun | undefined
  #finished: Promise<VmPoolReport> | undefined
  #workerCount = 0

  constructor(options: ResolvedVmPoolOptions) {
    this.options = options
  }

  get isFinished(): boolean {
    return this.#finished !== undefined
  }

  /** Provider, probe, pool and broker; idempotent. Fails with the provider's own error. */
  async start(): Promise<void> {
    await this.#start()
  }

  #start(): Promise<StartedRun> {
    this.#starting ??= this.#doStart()
    return this.#starting
  }

  async #doStart(): Promise<StartedRun> {
    const provider = await createProvider(this.options.provider, this.options.providerOptions)
    this.#provider = provider
    if (provider.probe) {
      const probe = await provider.probe()
      if (!probe.usable) {
        throw new VmPoolError({
          code: 'VMPOOL_PROVIDER_UNAVAILABLE',
          provider: provider.name,
          operation: 'vitest setup',
          message: `provider ${provider.name} is not usable on this machine: ${probe.reason}`,
          hint: probe.hint ?? `run: npx vm-pool doctor --provider ${provider.name}`,
          details: probe.details,
        })
      }
    }
    // Created here, in the Vitest main process: that is the owner the pool's reaper watches, so Ctrl-C or
    // `kill -9` of `vitest run` (which skip Vitest's teardown) still end with the run's VMs deleted.
    const pool = createPool({
      provider,
      prefix: this.options.prefix,
      spec: this.options.spec,
      keepWarm: this.options.keepWarm,
      stateDir: this.options.stateDir,
      ...(this.options.leaseStore ? { leaseStore: this.options.leaseStore } : {}),
      reaper: { providerName: this.options.provider, providerOptions: { ...this.options.providerOptions } },
    })
    const freshVms = new FreshVmOwners(pool, provider, this.#report)
    const broker = await startFreshVmBroker({
      create: (owner, spec) => {
        this.#assertNotFinished('freshVm')
        return freshVms.create(owner, spec)
      },
      delete: (owner, name) => freshVms.delete(owner, name),
      keep: (owner, name, reason) => freshVms.keep(owner, name, reason),
    })
    this.#started = { pool, broker, bindings: new WorkerBindings(pool, this.#report), freshVms }
    debug('run %s started: provider %s, broker %s', pool.runId, provider.name, broker.socketPath)
    return this.#started
  }

  /** Boot one VM per slot in parallel, with progress on stderr. The first failure is thrown (once). */
  async prewarm(slots: number): Promise<void> {
    const { pool, bindings } = await this.#start()
    const pending = new Set<number>()
    const started = performance.now()
    process.stderr.write(`vm-pool: booting ${slots} worker VM${slots === 1 ? '' : 's'} on ${this.options.provider} (run ${pool.runId}, one per worker slot)\n`)
    const timer = setInterval(() => {
      const waiting = [...pending].map((slot) => `slot ${slot}`).join(', ')
      process.stderr.write(`vm-pool: still booting ${waiting} (${formatSeconds(performance.now() - started)})\n`)
    }, PREWARM_PROGRESS_INTERVAL_MS)
    timer.unref()
    try {
      const results = await Promise.allSettled(
        Array.from({ length: slots }, async (_, i) => {
          const slot = i + 1
          pending.add(slot)
          try {
            const lease = await bindings.acquire(slot)
            const how = lease.adopted ? 'adopted warm' : `ready in ${formatSeconds(this.#report.get(lease.name)?.bootMs ?? performance.now() - started)}`
            process.stderr.write(`vm-pool: ${lease.name} (slot ${slot}) ${how}\n`)
          } finally {
            pending.delete(slot)
          }
        }),
      )
      const failure = results.find((result): result is PromiseRejectedResult => result.status === 'rejected')
      if (failure) throw failure.reason
    } finally {
      clearInterval(timer)
    }
  }

  /** A new worker announced its slot (`start`): give it the slot's VM (booting or replacing it if needed). */
  async bindWorker(slot: number): Promise<VmPoolWorkerContext> {
    const owner = `w${++this.#workerCount}`
    const base = { provider: this.options.provider, providerOptions: { ...this.options.providerOptions }, slot, owner, brokerSocket: '', timeoutScale: this.options.timeoutScale, keepOnFailure: this.options.keepOnFailure }
    try {
      const { broker, bindings, freshVms } = await this.#start()
      base.brokerSocket = broker.socketPath
      freshVms.addWorker(owner, slot)
      await bindings.settledFor(slot)
      this.#assertNotFinished('bind worker')
      const lease = await bindings.acquire(slot)
      debug('worker %s bound to slot %d: %s', owner, slot, lease.name)
      return { ...base, record: lease.vm.record }
    } catch (error) {
      return { ...base, error: toVmPoolError(error, 'bind worker').toJSON() }
    }
  }

  /** A worker was handed test files: each file after its VM's first counts as a reuse. */
  recordFiles(worker: VmPoolWorkerContext, files: number): void {
    if (worker.record) this.#report.countFiles(worker.record.name, files)
  }

  /**
   * A worker is gone. The fresh VMs it still owned are deleted; after a crash its slot VM is replaced
   * too (`WorkerBindings.replace`). The slot's next worker waits for both.
   */
  workerExited(worker: VmPoolWorkerContext, crashed: boolean): void {
    const parts = this.#started
    if (this.#finished || !parts) return
    const vmName = worker.record?.name
    // From now on the broker refuses this worker; its fresh VMs are being deleted.
    const freshGone = parts.freshVms.removeWorker(worker.owner)
    parts.bindings.settleBefore(worker.slot, async () => {
      await Promise.all([freshGone, crashed && vmName !== undefined ? parts.bindings.replace(worker.slot, vmName) : undefined])
    })
  }

  /**
   * End of run: delete everything (or hand worker VMs back warm), check with the provider that
   * nothing of this run is left, print the summary and write the report. Runs once;
   * globalSetup teardown and `vitest.onClose` both call it.
   */
  finish(): Promise<VmPoolReport> {
    this.#finished ??= this.#doFinish()
    return this.#finished
  }

  async #doFinish(): Promise<VmPoolReport> {
    // Let a crash replacement or a slot boot that is still running settle before draining.
    const parts = await this.#starting?.catch(() => undefined)
    await parts?.bindings.settled()
    const errors: unknown[] = []
    if (parts) {
      const drained = await drainPool(parts.pool).catch((error: unknown) => void errors.push(error))
      for (const name of drained?.deleted ?? []) this.#report.markDeleted(name)
      for (const name of drained?.keptWarm ?? []) this.#report.markWarm(name)
    }
    // The pool closed its provider in drain(): check what is left with a new one.
    if (this.#report.size > 0) {
      const checker = await createProvider(this.options.provider, this.options.providerOptions).catch((error: unknown) => void errors.push(error))
      if (checker) {
        try {
          this.#report.settle(new Set((await checker.list()).map((vm) => vm.name)))
        } catch (error) {
          errors.push(error)
        }
        await checker.close?.().catch((error: unknown) => errors.push(error))
      }
    }
    await parts?.broker.close().catch((error: unknown) => errors.push(error))
    // Nothing was created (setup failed early): the pool never took the provider over.
    if (!parts) await this.#provider?.close?.().catch((error: unknown) => errors.push(error))
    const report = this.#report.build(parts?.pool.runId ?? null, this.options.provider)
    for (const line of this.#report.formatSummary(report)) process.stderr.write(`${line}\n`)
    if (this.options.report) await writeVmPoolReport(this.options.report, report)
    for (const error of errors) process.stderr.write(`vm-pool: teardown error: ${error instanceof Error ? error.message : String(error)}\n`)
    return report
  }

  #assertNotFinished(operation: string): void {
    if (this.#finished) throw new VmPoolError({ code: 'VMPOOL_POOL_CLOSED', operation, message: 'the vm-pool run is already finished' })
  }
}

/** `drain()` still does what it can when a delete fails; its error's details say what. */
async function drainPool(pool: VmPool): Promise<DrainResult> {
  try {
    return await pool.drain()
  } catch (error) {
    const details = isVmPoolError(error, 'VMPOOL_DELETE_FAILED') ? (error.details as DrainResult | undefined) : undefined
    if (!details) throw error
    return details
  }
}

function toVmPoolError(error: unknown, operation: string): VmPoolError {
  if (isVmPoolError(error)) return error
  return new VmPoolError({ code: 'VMPOOL_INTERNAL', operation, message: error instanceof Error ? error.message : String(error), cause: error })
}

function formatSeconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`
}
