/**
 * `npm run bench`: runs every section and prints ONE table (benchmark | value | note).
 * Options: `--provider NAME` (or VM_POOL_PROVIDER; default qemu) runs only the sections for that
 * provider plus the provider-independent ones; `--short` (or BENCH_SHORT=1) takes fewer samples;
 * `--files N` / `--workers W` size the seed 003 suite (default 8 files, 4 with --short; 2 workers);
 * `--only a,b` runs only the named sections (seed-003, qemu-boot, inside-vm, protocol, lease-store, lease-store-postgres, qemu-debian); `--debian`
 * adds the opt-in qemu-debian section (the debian-12 image: minutes of Debian boots) to the others.
 * Add a section with one line in `sections`. Runs against dist/ (`npm run build` first).
 */
import { parseArgs } from 'node:util'

export interface BenchOptions {
  provider: string
  short: boolean
  files?: number
  workers?: number
}

export interface BenchRow {
  benchmark: string
  value: string
  note: string
}

interface BenchSection {
  name: string
  /** Runs only for these providers; absent = provider-independent. */
  providers?: string[]
  /** Runs only when asked for (`--only NAME`, or its own flag). */
  optIn?: boolean
  run(options: BenchOptions): Promise<BenchRow[]>
}

const sections: BenchSection[] = [
  { name: 'seed-003', run: async (options) => (await import('./seed-003.ts')).runSeed003Bench(options) },
  { name: 'qemu-boot', providers: ['qemu'], run: async (options) => (await import('./qemu-boot.ts')).runQemuBootBench(options) },
  { name: 'qemu-debian', providers: ['qemu'], optIn: true, run: async (options) => (await import('./qemu-debian.ts')).runQemuDebianBench(options) },
  { name: 'inside-vm', providers: ['qemu'], run: async (options) => (await import('./inside-vm.ts')).runInsideVmBench(options) },
  { name: 'protocol', run: async (options) => (await import('./protocol.ts')).runProtocolBench(options) },
  { name: 'lease-store', run: async () => (await (await import('./lease-store.ts')).runLeaseStoreBench()).map((row) => ({ benchmark: row.name, value: `p50 ${row.p50Ms} ms, p99 ${row.p99Ms} ms`, note: `${row.samples} samples` })) },
  { name: 'lease-store-postgres', run: async () => (await (await import('./lease-store.ts')).postgresBench()).map((row) => ({ benchmark: row.name, value: `p50 ${row.p50Ms} ms, p99 ${row.p99Ms} ms`, note: `${row.samples} samples` })) },
]

const { values } = parseArgs({ options: { provider: { type: 'string', short: 'p' }, short: { type: 'boolean' }, debian: { type: 'boolean' }, only: { type: 'string' }, files: { type: 'string' }, workers: { type: 'string' } }, strict: true })
const options: BenchOptions = {
  provider: values.provider ?? process.env.VM_POOL_PROVIDER ?? 'qemu',
  short: values.short ?? ['1', 'true'].includes(process.env.BENCH_SHORT ?? ''),
  files: values.files === undefined ? undefined : positiveInt('--files', values.files),
  workers: values.workers === undefined ? undefined : positiveInt('--workers', values.workers),
}

function positiveInt(flag: string, raw: string): number {
  const value = Number(raw)
  if (!Number.isInteger(value) || value < 1) throw new Error(`${flag} must be a positive integer, got ${JSON.stringify(raw)}`)
  return value
}

const rows: BenchRow[] = []
let failed = false
for (const section of sections) {
  if (section.providers && !section.providers.includes(options.provider)) continue
  if (values.only && !values.only.split(',').includes(section.name)) continue
  if (section.optIn && !values.only?.split(',').includes(section.name) && !(section.name === 'qemu-debian' && values.debian)) continue
  process.stderr.write(`bench: ${section.name}...\n`)
  try {
    rows.push(...(await section.run(options)))
  } catch (error) {
    failed = true
    rows.push({ benchmark: section.name, value: 'FAILED', note: (error as Error).message.split('\n')[0]! })
  }
}

const header: BenchRow = { benchmark: 'benchmark', value: 'value', note: 'note' }
const widths = (['benchmark', 'value'] as const).map((key) => Math.max(...[header, ...rows].map((row) => row[key].length)))
const line = (row: BenchRow) => `${row.benchmark.padEnd(widths[0]!)} | ${row.value.padEnd(widths[1]!)} | ${row.note}`
console.log(line(header))
console.log(`${'-'.repeat(widths[0]!)}-|-${'-'.repeat(widths[1]!)}-|-${'-'.repeat(4)}`)
for (const row of rows) console.log(line(row))
process.exitCode = failed ? 1 : 0
