import { mkdir } from 'node:fs/promises'
import { dirname } from 'node:path'
import type { KeptVmHelp, VmRecord } from '../providers/vm-provider.js'
import { writeFileAtomic } from '../util/fs-atomic.js'

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
  /**
   * `deleted`, `warm` (handed back with keepWarm), `kept` (a fresh VM left running with `keep()`),
   * `leaked` (still there after the run), `live` (run not finished).
   */
  state: 'live' | 'deleted' | 'warm' | 'kept' | 'leaked'
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
  /** VMs of this run still present after teardown that were not handed back warm nor kept. */
  leaked: number
  keptWarm: number
  /** Fresh VMs a test left running with `keep()`: not deleted by the run, not counted as leaked. */
  kept: number
  vms: VmPoolReportVm[]
}

/**
 * What only the Vitest side knows about the run's VMs — kind, slot, boot time, files served, and
 * the state the report gives them — and the numbers built from it. Which VMs exist and who leases
 * them is the pool's business (src/pool); this only records what the run saw happen to them.
 */
export class VmPoolReportBuilder {
  readonly #vms = new Map<string, VmPoolReportVm>()
  readonly #kept = new Map<string, KeptVmHelp | undefined>()
  #reused = 0

  get size(): number {
    return this.#vms.size
  }

  /** A VM this run booted or adopted; the first call for a name wins. */
  addVm(record: VmRecord, kind: 'worker' | 'fresh', slot: number | null, bootMs: number | null, adopted: boolean): VmPoolReportVm {
    const existing = this.#vms.get(record.name)
    if (existing) return existing
    const entry: VmPoolReportVm = { name: record.name, kind, slot, bootMs: bootMs === null ? null : Math.round(bootMs), adopted, files: 0, state: 'live', createdAt: record.createdAt }
    this.#vms.set(record.name, entry)
    return entry
  }

  get(name: string): Readonly<VmPoolReportVm> | undefined {
    return this.#vms.get(name)
  }

  /** A worker was handed test files on `vmName`: each file after the VM's first counts as a reuse. */
  countFiles(vmName: string, files: number): void {
    const entry = this.#vms.get(vmName)
    if (!entry) return
    for (let i = 0; i < files; i++) {
      if (entry.files > 0 || entry.adopted) this.#reused++
      entry.files++
    }
  }

  markReplacedAfterCrash(name: string): void {
    const entry = this.#vms.get(name)
    if (entry) entry.replacedAfterCrash = true
  }

  /** Names of VMs that are not this run's (another process's idle VM the pool evicted) are ignored. */
  markDeleted(name: string): void {
    const entry = this.#vms.get(name)
    if (entry) entry.state = 'deleted'
  }

  markWarm(name: string): void {
    const entry = this.#vms.get(name)
    if (entry) entry.state = 'warm'
  }

  /** `help` (from `provider.describe`) says how to reach and delete it, when the provider knows. */
  markKept(name: string, help: KeptVmHelp | undefined): void {
    const entry = this.#vms.get(name)
    if (!entry) return
    entry.state = 'kept'
    this.#kept.set(name, help)
  }

  /**
   * After teardown, with the names the provider still lists: a VM neither handed back warm nor
   * kept is leaked if it is there, deleted if it is not (checked, not assumed).
   */
  settle(present: ReadonlySet<string>): void {
    for (const entry of this.#vms.values()) {
      if (entry.state === 'warm' || entry.state === 'kept') continue
      if (present.has(entry.name)) entry.state = 'leaked'
      else if (entry.state === 'live') entry.state = 'deleted'
    }
  }

  build(runId: string | null, provider: string): VmPoolReport {
    const vms = [...this.#vms.values()].map((vm) => ({ ...vm }))
    const count = (state: VmPoolReportVm['state']) => vms.filter((vm) => vm.state === state).length
    return {
      runId,
      provider,
      created: vms.filter((vm) => !vm.adopted).length,
      reused: this.#reused,
      deleted: count('deleted'),
      leaked: count('leaked'),
      keptWarm: count('warm'),
      kept: count('kept'),
      vms,
    }
  }

  /** The lines printed at the end of the run (stderr): the summary, then what is still there and why. */
  formatSummary(report: VmPoolReport): string[] {
    const warm = report.keptWarm > 0 ? `, ${report.keptWarm} kept warm` : ''
    const kept = report.kept > 0 ? `, ${report.kept} kept by keep()` : ''
    const lines = [`vm-pool: ${report.created} created, ${report.reused} reused, ${report.deleted} deleted, ${report.leaked} leaked${warm}${kept}`]
    if (report.leaked > 0) {
      const names = report.vms.filter((vm) => vm.state === 'leaked').map((vm) => vm.name)
      lines.push(`vm-pool: still present after the run: ${names.join(', ')} (remove with: npx vm-pool gc --provider ${report.provider})`)
    }
    for (const [name, help] of this.#kept) {
      // A kept VM has no lease: whatever else the provider says, the next gc sweeps it.
      const how = help ? `; reach it with: ${help.reach}; delete it now with: ${help.remove}` : ''
      lines.push(`vm-pool: ${name} was kept running by keep(); the next \`npx vm-pool gc --provider ${report.provider}\` deletes it${how}`)
    }
    return lines
  }
}

/** Writes the report JSON atomically (a reader never sees half of it). */
export async function writeVmPoolReport(path: string, report: VmPoolReport): Promise<void> {
  await mkdir(dirname(path), { recursive: true })
  await writeFileAtomic(path, `${JSON.stringify(report, null, 2)}\n`, 0o644)
}
