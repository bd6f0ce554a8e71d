/**
 * Bench section: the seed 003 scenario. A generated project of N Vitest test files, each needing a VM
 * for a few commands, run with real `vitest run` (maxWorkers W) several ways on the same machine:
 *   - a VM per file (the file creates, uses and deletes its own VM), with a cold boot each, and
 *     (qemu) with a snapshot restore each;
 *   - vm-pool worker VMs (the plugin: one VM per worker slot, reused by every file in that slot),
 *     cold-booted and (qemu) snapshot-restored; the restored run keeps its VMs warm at the end;
 *   - vm-pool on the warm VMs that previous run left (keepWarm): nothing is created.
 * Wall time is from spawning Vitest to its exit; VMs created comes from the files (per file) or the
 * plugin's report. Runs against dist/ (`npm run build` first). Standalone: `node bench/seed-003.ts`.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { loadDist } from './bench-util.ts'

export interface Seed003Options {
  provider: string
  short: boolean
  /** Test files in the generated suite. */
  files?: number
  /** Vitest maxWorkers. */
  workers?: number
}

export interface Seed003Row {
  benchmark: string
  value: string
  note: string
}

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..')
/** One Vitest run of the generated suite may take this long before it is killed (cold boots on 2 cores). */
const RUN_TIMEOUT_MS = 900_000


/** What each test file does with its VM: a handful of commands, like a small integration test. */
const USE_VM = `
export async function useVm(vm, file) {
  const uname = await vm.exec('uname -s')
  if (!uname.stdout.includes('Linux')) throw new Error('not a Linux guest: ' + uname.stdout)
  for (let i = 0; i < 4; i++) {
    const result = await vm.exec(['sh', '-c', 'mkdir -p /tmp/bench && echo "$1" > /tmp/bench/$2 && cat /tmp/bench/$2', 'sh', file + '-' + i, file])
    if (result.stdout !== file + '-' + i + '\\n') throw new Error('unexpected output: ' + JSON.stringify(result))
  }
}
`

function perFileTest(index: number): string {
  return `import { test } from 'vitest'
import { createProvider } from 'vm-pool'
import { useVm } from '../use-vm.js'
import { writeFileSync } from 'node:fs'

test('file ${index}: its own VM', async () => {
  const provider = await createProvider(process.env.BENCH_PROVIDER, JSON.parse(process.env.BENCH_PROVIDER_OPTIONS))
  const name = 'bench-file-' + process.pid + '-${index}'
  const record = await provider.create({ name })
  writeFileSync(process.env.BENCH_RESULTS + '/${index}.created', name)
  try {
    const vm = await provider.connect(record)
    await useVm(vm, 'f${index}')
    await vm.close?.()
  } finally {
    await provider.delete(name)
    await provider.close?.()
  }
})
`
}

function pooledTest(index: number): string {
  return `import { test } from 'vm-pool/vitest'
import { useVm } from '../use-vm.js'

test('file ${index}: the worker VM', async ({ workerVm }) => {
  await useVm(workerVm, 'f${index}')
})
`
}

const CONFIG = `import { defineConfig } from 'vitest/config'
import { vmPool } from 'vm-pool/vitest'

const pooled = process.env.BENCH_MODE === 'pool'
const keepWarm = process.env.BENCH_KEEP_WARM === '1' ? { ttlMs: 600_000, max: Number(process.env.BENCH_WORKERS) } : false
export default defineConfig({
  cacheDir: process.env.BENCH_CACHE_DIR,
  plugins: pooled
    ? [vmPool({ provider: process.env.BENCH_PROVIDER, providerOptions: JSON.parse(process.env.BENCH_PROVIDER_OPTIONS), stateDir: process.env.BENCH_STATE_DIR, keepWarm, report: process.env.BENCH_REPORT })]
    : [],
  test: { include: [pooled ? 'pooled/*.test.js' : 'per-file/*.test.js'], maxWorkers: Number(process.env.BENCH_WORKERS), testTimeout: 600_000, hookTimeout: 600_000 },
})
`

interface RunResult {
  wallMs: number
  created: number
  reused: number | undefined
}

export async function runSeed003Bench(options: Seed003Options): Promise<Seed003Row[]> {
  const files = options.files ?? (options.short ? 4 : 8)
  const workers = options.workers ?? 2
  const qemu = options.provider === 'qemu'
  // Inside the repo so `vm-pool` and `vitest` resolve (package self-reference, the repo's node_modules).
  mkdirSync(join(REPO, '.vm-pool'), { recursive: true })
  const project = mkdtempSync(join(REPO, '.vm-pool', 'bench-seed003-'))
  const temp = mkdtempSync(join(tmpdir(), 'vmp-b3-'))
  const stateDir = join(temp, 'state')
  const snapshotDir = join(temp, 'snapshots')
  mkdirSync(join(project, 'per-file'), { recursive: true })
  mkdirSync(join(project, 'pooled'), { recursive: true })
  writeFileSync(join(project, 'vitest.config.mjs'), CONFIG)
  writeFileSync(join(project, 'use-vm.js'), USE_VM)
  for (let i = 1; i <= files; i++) {
    const id = String(i).padStart(2, '0')
    writeFileSync(join(project, 'per-file', `f${id}.test.js`), perFileTest(i))
    writeFileSync(join(project, 'pooled', `f${id}.test.js`), pooledTest(i))
  }
  const providerOptions = (snapshot: boolean): Record<string, unknown> => (qemu ? { stateDir, snapshotDir, snapshot: snapshot ? 'auto' : false } : { stateDir })
  const { createProvider } = await loadDist()

  const run = async (label: string, env: Record<string, string>): Promise<RunResult> => {
    const results = join(temp, `results-${label}`)
    const report = join(temp, `report-${label}.json`)
    mkdirSync(results, { recursive: true })
    const childEnv: NodeJS.ProcessEnv = {}
    for (const [key, value] of Object.entries(process.env)) if (!/^(VITEST|TEST$|NODE_ENV$|VM_POOL_STATE_DIR$)/.test(key)) childEnv[key] = value
    Object.assign(childEnv, { NO_COLOR: '1', BENCH_PROVIDER: options.provider, BENCH_WORKERS: String(workers), BENCH_RESULTS: results, BENCH_REPORT: report, BENCH_STATE_DIR: stateDir, BENCH_CACHE_DIR: join(temp, 'vite-cache'), ...env })
    const started = performance.now()
    const child = spawn(process.execPath, [join(REPO, 'node_modules/vitest/vitest.mjs'), 'run', '--root', project], { cwd: project, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
    const timer = setTimeout(() => child.kill('SIGKILL'), RUN_TIMEOUT_MS)
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
    clearTimeout(timer)
    const wallMs = performance.now() - started
    if (code !== 0) {
      // The error lines, not the stack frames under them.
      const lines = output.trim().split('\n').filter((line) => line.trim() !== '' && !/^\s+at /.test(line))
      throw new Error(`vitest run (${label}) exited with ${code}: ${lines.slice(-8).join(' | ')}`)
    }
    if (env.BENCH_MODE === 'pool') {
      const numbers = JSON.parse(readFileSync(report, 'utf8')) as { created: number; reused: number }
      return { wallMs, created: numbers.created, reused: numbers.reused }
    }
    return { wallMs, created: readdirSync(results).filter((file) => file.endsWith('.created')).length, reused: undefined }
  }

  try {
    const rows: Seed003Row[] = []
    const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`
    const where = `${files} files, ${workers} workers`
    if (qemu) {
      // The snapshot is built once, untimed, as any earlier run on this machine would have left it.
      const provider = await createProvider('qemu', providerOptions(true))
      const started = performance.now()
      await provider.create({ name: `bench-snapshot-${process.pid}` })
      await provider.delete(`bench-snapshot-${process.pid}`)
      await provider.close?.()
      process.stderr.write(`bench: seed-003: snapshot built in ${s(performance.now() - started)} (untimed)\n`)
    }
    const perFileCold = await run('per-file-cold', { BENCH_MODE: 'per-file', BENCH_PROVIDER_OPTIONS: JSON.stringify(providerOptions(false)) })
    const base = perFileCold.wallMs
    const add = (benchmark: string, result: RunResult, note: string) =>
      rows.push({ benchmark, value: `${s(result.wallMs)}, ${result.created} VMs created`, note: `${(result.wallMs / base).toFixed(2)}x of a VM per file${qemu ? ' (cold)' : ''}; ${note}` })
    add(`seed 003: a VM per file${qemu ? ', cold boot' : ''}`, perFileCold, `${where}; create, use, delete in each file`)
    if (qemu) {
      add('seed 003: a VM per file, snapshot restore', await run('per-file-restore', { BENCH_MODE: 'per-file', BENCH_PROVIDER_OPTIONS: JSON.stringify(providerOptions(true)) }), where)
      add('seed 003: vm-pool worker VMs, cold boot', await run('pool-cold', { BENCH_MODE: 'pool', BENCH_PROVIDER_OPTIONS: JSON.stringify(providerOptions(false)) }), `${where}; deleted at the end`)
    }
    const pooled = await run('pool', { BENCH_MODE: 'pool', BENCH_KEEP_WARM: '1', BENCH_PROVIDER_OPTIONS: JSON.stringify(providerOptions(true)) })
    add(`seed 003: vm-pool worker VMs${qemu ? ', snapshot restore' : ''}`, pooled, `${where}; kept warm at the end`)
    const warm = await run('pool-warm', { BENCH_MODE: 'pool', BENCH_KEEP_WARM: '1', BENCH_PROVIDER_OPTIONS: JSON.stringify(providerOptions(true)) })
    add('seed 003: vm-pool on warm VMs of the previous run', warm, `${where}; ${warm.reused ?? 0} leases served without a boot`)
    return rows
  } finally {
    // Whatever a failed run left: every VM in the bench's state dir goes.
    const provider = await createProvider(options.provider, providerOptions(true)).catch(() => undefined)
    for (const info of (await provider?.list().catch(() => [])) ?? []) await provider?.delete(info.name).catch(() => {})
    await provider?.close?.()
    rmSync(project, { recursive: true, force: true })
    if (existsSync(temp)) rmSync(temp, { recursive: true, force: true })
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  for (const row of await runSeed003Bench({ provider: process.env.VM_POOL_PROVIDER ?? 'qemu', short: process.argv.includes('--short') })) console.log(`${row.benchmark} | ${row.value} | ${row.note}`)
}
