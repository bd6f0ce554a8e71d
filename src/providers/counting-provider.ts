import type { VmProvider, VmRecord, VmSpec } from './vm-provider.js'

export interface CountingStats {
  /** VMs this wrapper created successfully. */
  created: number
  /** Deletes of VMs this wrapper created (a repeated delete of the same name counts once). */
  deleted: number
  /** created − deleted: VMs still alive. */
  live: number
  /** Names of every VM created, in creation order. */
  names: string[]
}

export interface CountingProvider extends VmProvider {
  /** A live view: read it after the code under test ran. */
  readonly stats: Readonly<CountingStats>
  /** Names of the VMs created and not yet deleted. */
  liveNames(): string[]
}

/**
 * Wraps any provider and counts allocations, so a suite can prove "one VM per workflow / per worker".
 * Counts are per wrapper object (per process).
 */
export function countingProvider(inner: VmProvider): CountingProvider {
  const names: string[] = []
  const live = new Set<string>()
  let deleted = 0
  const stats = {
    get created() {
      return names.length
    },
    get deleted() {
      return deleted
    },
    get live() {
      return live.size
    },
    get names() {
      return [...names]
    },
  }
  const wrapper: CountingProvider = {
    name: inner.name,
    stats,
    liveNames: () => [...live],
    async create(spec: VmSpec): Promise<VmRecord> {
      const record = await inner.create(spec)
      names.push(record.name)
      live.add(record.name)
      return record
    },
    connect: (record) => inner.connect(record),
    async delete(name: string): Promise<void> {
      await inner.delete(name)
      if (live.delete(name)) deleted++
    },
    list: () => inner.list(),
  }
  if (inner.probe) wrapper.probe = () => inner.probe!()
  if (inner.close) wrapper.close = () => inner.close!()
  if (inner.reset) wrapper.reset = (name) => inner.reset!(name)
  if (inner.describe) wrapper.describe = (record) => inner.describe!(record)
  if (inner.fingerprint) wrapper.fingerprint = (spec) => inner.fingerprint!(spec)
  if (inner.shell) wrapper.shell = (record, command) => inner.shell!(record, command)
  if (inner.isRunning) wrapper.isRunning = (record) => inner.isRunning!(record)
  return wrapper
}
