import { mkdir } from 'node:fs/promises'
import { dirname } from 'node:path'
import { VmPoolError, isVmPoolError } from '../errors.js'
import { createProvider } from '../providers/provider-registry.js'
import type { VmProvider, VmRecord, VmSpec } from '../providers/vm-provider.js'
import { createDebug } from '../util/debug.js'
import { writeFileAtomic } from '../util/fs-atomic.js'
import { startFreshVmBroker, type FreshVmBroker } from './fresh-vm-broker.js'
import { poolSlotVmSource, type SlotVmSource } from './slot-vm-source.js'
import type { ResolvedVmPoolOptions } from './vm-pool-options.js'
import type { VmPoolWorkerContext } from './worker-context.js'

const debug = createDebug('vm-pool:vitest')

/** How often prewarm says which VMs are still booting. */
export const PREWARM_PROGRESS_INTERVAL_MS = 5_000

/** One VM of the run, as the end-of-run report lists it. */
export interface VmPoolReportVm {
  name: string
  kind: 'worker' | 'fresh'
  /** Worker slot (`VITEST_POOL_ID`) of a worker VM; the slot of the asking worker for a fresh VM. */
  slot: number | null
  /** Time `create` took; `null` for a VM adopted warm from an earlier run. */
  bootMs: number | null
  adopted: boolean
  /** Test files that ran with this VM as their worker VM. */
  files: number
  /** `deleted`, `warm` (handed back with keepWarm), `leaked` (still there after the run), `live` (run not finished). */
  state: 'live' | 'deleted' | 'warm' | 'leaked'
  /** Set on a worker VM deleted because its worker crashed (its state was unknown). */
  replacedAfterCrash?: boolean
  createdAt: string
}

/** The `report` JSON; `vm-pool: N created, N reused, N deleted, N leaked` says the same. */
export interface VmPoolReport {
  runId: string | null
  provider: string
  /** VMs this run booted (worker and fresh). */
  created: number
  /** Test files served by a worker VM that an earlier file (or an earlier run, when adopted warm) already used. */
  reused: number
  /** VMs this run deleted. */
  deleted: number
  /** VMs of this run still present after teardown that were not handed back warm. */
  leaked: number
  keptWarm: number
  vms: VmPoolReportVm[]
}

interface WorkerBinding {
  slot: number
  vmName: string | undefined
}

/**
 * Everything `vm-pool/vitest` keeps in the Vitest main process for one run: the provider, the VM
 * source, the slot → VM bindings, the freshVm broker and the numbers for the report.
 * It lives on `globalThis` (see `getVitestVmPoolRun`) because Vitest evaluates modules loaded by
 * both the config and the module runner twice in the main process.
 */
export class VitestVmPoolRun {
  readonly options: ResolvedVmPoolOptions
  private started: Promise<void> | undefined
  private provider: VmProvider | undefined
  private source: SlotVmSource | undefined
  private broker: FreshVmBroker | undefined
  private finished: Promise<VmPoolReport> | undefined
  private readonly vms = new Map<string, VmPoolReportVm>()
  private readonly workers = new Map<string, WorkerBinding>()
  private readonly freshOwners = new Map<string, string>()
  /** Deletion of a crashed worker's VM, awaited by the next bind of that slot. */
  private readonly discarding = new Map<number, Promise<void>>()
  private ownerCount = 0
  private reused = 0
  private deleted = 0

  constructor(options: ResolvedVmPoolOptions) {
    this.options = options
  }

  get isFinished(): boolean {
    return this.finished !== undefined
  }

  /** Provider, probe, VM source and broker; idempotent. Fails with the provider's own error. */
  start(): Promise<void> {
    this.started ??= this.doStart()
    return this.started
  }

  private async doStart(): Promise<void> {
    const provider = await createProvider(this.options.provider, this.options.providerOptions)
    this.provider = provider
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
    this.source = poolSlotVmSource({
      provider,
      providerName: this.options.provider,
      providerOptions: { ...this.options.providerOptions },
      prefix: this.options.prefix,
      spec: this.options.spec,
      keepWarm: this.options.keepWarm,
      stateDir: this.options.stateDir,
      events: {
        onCreated: (record, slot, bootMs) => this.addEntry(record, slot === null ? 'fresh' : 'worker', slot, Math.round(bootMs), false),
        onDeleted: (name) => this.onDeleted(name),
      },
    })
    this.broker = await startFreshVmBroker({
      create: (owner, spec) => this.createFresh(owner, spec),
      delete: (owner, name) => this.deleteFresh(owner, name),
    })
    debug('run %s started: provider %s, broker %s', this.source.runId, provider.name, this.broker.socketPath)
  }

  /** Boot one VM per slot in parallel, with progress on stderr. The first failure is thrown (once). */
  async prewarm(slots: number): Promise<void> {
    await this.start()
    const source = this.source!
    const pending = new Map<number, number>()
    const started = performance.now()
    process.stderr.write(`vm-pool: booting ${slots} worker VM${slots === 1 ? '' : 's'} on ${this.options.provider} (run ${source.runId}, one per worker slot)\n`)
    const timer = setInterval(() => {
      const waiting = [...pending.keys()].map((slot) => `slot ${slot}`).join(', ')
      process.stderr.write(`vm-pool: still booting ${waiting} (${formatSeconds(performance.now() - started)})\n`)
    }, PREWARM_PROGRESS_INTERVAL_MS)
    timer.unref()
    try {
      const results = await Promise.allSettled(
        Array.from({ length: slots }, async (_, i) => {
          const slot = i + 1
          pending.set(slot, performance.now())
          try {
            const vm = await source.acquire(slot)
            const entry = this.vms.get(vm.record.name)
            const how = vm.adopted ? 'adopted warm' : `ready in ${formatSeconds(entry?.bootMs ?? performance.now() - started)}`
            process.stderr.write(`vm-pool: ${vm.record.name} (slot ${slot}) ${how}\n`)
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
    const owner = `w${++this.ownerCount}`
    const binding: WorkerBinding = { slot, vmName: undefined }
    this.workers.set(owner, binding)
    const base = { provider: this.options.provider, providerOptions: { ...this.options.providerOptions }, slot, owner, brokerSocket: '', timeoutScale: this.options.timeoutScale }
    try {
      await this.start()
      base.brokerSocket = this.broker!.socketPath
      await this.discarding.get(slot)
      if (this.finished) throw new VmPoolError({ code: 'VMPOOL_POOL_CLOSED', operation: 'bind worker', message: 'the vm-pool run is already finished' })
      const vm = await this.source!.acquire(slot)
      binding.vmName = vm.record.name
      const entry = this.vms.get(vm.record.name) ?? this.addEntry(vm.record, 'worker', slot, null, vm.adopted)
      entry.state = 'live'
      debug('worker %s bound to slot %d: %s', owner, slot, vm.record.name)
      return { ...base, record: vm.record }
    } catch (error) {
      return { ...base, error: toVmPoolError(error, 'bind worker').toJSON() }
    }
  }

  /** A worker was handed test files: each file after the VM's first counts as a reuse. */
  recordFiles(owner: string, files: number): void {
    const vmName = this.workers.get(owner)?.vmName
    const entry = vmName === undefined ? undefined : this.vms.get(vmName)
    if (!entry) return
    for (let i = 0; i < files; i++) {
      if (entry.files > 0 || entry.adopted) this.reused++
      entry.files++
    }
  }

  /**
   * A worker is gone. After a crash the slot's VM may be in any state (half-written files, a test's
   * processes still running): delete it now, and let the next worker of that slot get a new one.
   * Whatever fresh VMs the worker still owned are deleted either way.
   */
  workerExited(owner: string, crashed: boolean): void {
    const binding = this.workers.get(owner)
    this.workers.delete(owner)
    if (this.finished || !this.source) return
    const source = this.source
    const orphans = [...this.freshOwners].filter(([, o]) => o === owner).map(([name]) => name)
    const cleanups = orphans.map((name) => {
      this.freshOwners.delete(name)
      return source.deleteFresh(name).catch((error: unknown) => process.stderr.write(`vm-pool: could not delete ${name} of a stopped worker: ${String(error)}\n`))
    })
    if (crashed && binding?.vmName) {
      const entry = this.vms.get(binding.vmName)
      if (entry) entry.replacedAfterCrash = true
      process.stderr.write(`vm-pool: the worker of slot ${binding.slot} exited unexpectedly; replacing its VM ${binding.vmName}\n`)
      const previous = this.discarding.get(binding.slot) ?? Promise.resolve()
      cleanups.push(
        previous
          .then(() => source.discard(binding.slot))
          .catch((error: unknown) => {
            process.stderr.write(`vm-pool: could not delete ${binding.vmName}: ${String(error)}\n`)
          }),
      )
    }
    if (cleanups.length === 0 || !binding) return
    // The slot's next worker waits for this: it must not meet the dead worker's VMs.
    const done = Promise.all([this.discarding.get(binding.slot), ...cleanups]).then(() => {})
    this.discarding.set(binding.slot, done)
  }

  private async createFresh(owner: string, spec: Omit<VmSpec, 'name'>): Promise<VmRecord> {
    if (this.finished) throw new VmPoolError({ code: 'VMPOOL_POOL_CLOSED', operation: 'freshVm', message: 'the vm-pool run is already finished' })
    if (!this.workers.has(owner)) throw new VmPoolError({ code: 'VMPOOL_INVALID_OPTIONS', operation: 'freshVm', message: `unknown worker ${JSON.stringify(owner)}` })
    const record = await this.source!.fresh({ ...this.options.spec, ...spec })
    this.freshOwners.set(record.name, owner)
    const entry = this.vms.get(record.name)
    if (entry) entry.slot = this.workers.get(owner)?.slot ?? null
    // The worker died while the VM booted: nobody will delete it but us.
    if (!this.workers.has(owner)) {
      this.freshOwners.delete(record.name)
      await this.source!.deleteFresh(record.name)
    }
    return record
  }

  private async deleteFresh(owner: string, name: string): Promise<void> {
    if (this.freshOwners.get(name) !== owner) return
    this.freshOwners.delete(name)
    await this.source!.deleteFresh(name)
  }

  private addEntry(record: VmRecord, kind: 'worker' | 'fresh', slot: number | null, bootMs: number | null, adopted: boolean): VmPoolReportVm {
    const entry: VmPoolReportVm = { name: record.name, kind, slot, bootMs, adopted, files: 0, state: 'live', createdAt: record.createdAt }
    this.vms.set(record.name, entry)
    return entry
  }

  private onDeleted(name: string): void {
    const entry = this.vms.get(name)
    if (entry && entry.state !== 'deleted') {
      entry.state = 'deleted'
      this.deleted++
    }
  }

  /**
   * End of run: delete everything (or hand worker VMs back warm), check with the provider that
   * nothing of this run is left, print the one summary line and write the report. Runs once;
   * globalSetup teardown and `vitest.onClose` both call it.
   */
  finish(): Promise<VmPoolReport> {
    this.finished ??= this.doFinish()
    return this.finished
  }

  private async doFinish(): Promise<VmPoolReport> {
    // Let a crash replacement or a slot boot that is still running settle before draining.
    await this.started?.catch(() => {})
    await Promise.all(this.discarding.values())
    const errors: unknown[] = []
    let keptWarm: string[] = []
    if (this.source) {
      try {
        keptWarm = (await this.source.drain()).keptWarm
      } catch (error) {
        errors.push(error)
      }
    }
    // The pool closed its provider in drain(): check what is left with a new one.
    let checker: VmProvider | undefined
    if (this.vms.size > 0) checker = await createProvider(this.options.provider, this.options.providerOptions).catch((error: unknown) => void errors.push(error))
    for (const name of keptWarm) {
      const entry = this.vms.get(name)
      if (entry) entry.state = 'warm'
    }
    let leaked = 0
    if (checker) {
      try {
        const present = new Set((await checker.list()).map((vm) => vm.name))
        for (const entry of this.vms.values()) {
          if (entry.state === 'warm') continue
          if (present.has(entry.name)) {
            entry.state = 'leaked'
            leaked++
          } else if (entry.state === 'live') {
            entry.state = 'deleted'
            this.deleted++
          }
        }
      } catch (error) {
        errors.push(error)
      }
    }
    await this.broker?.close().catch((error: unknown) => errors.push(error))
    await checker?.close?.().catch((error: unknown) => errors.push(error))
    // Nothing was created (setup failed early): the pool never took the provider over.
    if (!this.source) await this.provider?.close?.().catch((error: unknown) => errors.push(error))
    const vms = [...this.vms.values()]
    const report: VmPoolReport = {
      runId: this.source?.runId ?? null,
      provider: this.options.provider,
      created: vms.filter((vm) => !vm.adopted).length,
      reused: this.reused,
      deleted: this.deleted,
      leaked,
      keptWarm: keptWarm.length,
      vms,
    }
    const warm = report.keptWarm > 0 ? `, ${report.keptWarm} kept warm` : ''
    process.stderr.write(`vm-pool: ${report.created} created, ${report.reused} reused, ${report.deleted} deleted, ${report.leaked} leaked${warm}\n`)
    if (leaked > 0) {
      const names = vms.filter((vm) => vm.state === 'leaked').map((vm) => vm.name)
      process.stderr.write(`vm-pool: still present after the run: ${names.join(', ')} (remove with: npx vm-pool gc --provider ${this.options.provider})\n`)
    }
    if (this.options.report) {
      await mkdir(dirname(this.options.report), { recursive: true })
      await writeFileAtomic(this.options.report, `${JSON.stringify(report, null, 2)}\n`, 0o644)
    }
    for (const error of errors) process.stderr.write(`vm-pool: teardown error: ${error instanceof Error ? error.message : String(error)}\n`)
    return report
  }
}

function toVmPoolError(error: unknown, operation: string): VmPoolError {
  if (isVmPoolError(error)) return error
  return new VmPoolError({ code: 'VMPOOL_INTERNAL', operation, message: error instanceof Error ? error.message : String(error), cause: error })
}

function formatSeconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`
}

const REGISTRY = Symbol.for('vm-pool.vitest')

interface VitestRegistry {
  run: VitestVmPoolRun | undefined
}

function getRegistry(): VitestRegistry {
  const holder = globalThis as typeof globalThis & { [REGISTRY]?: VitestRegistry }
  holder[REGISTRY] ??= { run: undefined }
  return holder[REGISTRY]
}

/** The run of this Vitest process: one per `vitest run`; a finished one is replaced (watch mode restarts). */
export function getVitestVmPoolRun(options?: ResolvedVmPoolOptions): VitestVmPoolRun | undefined {
  const registry = getRegistry()
  if (options && (!registry.run || registry.run.isFinished || JSON.stringify(registry.run.options) !== JSON.stringify(options))) {
    registry.run = new VitestVmPoolRun(options)
  }
  return registry.run
}
