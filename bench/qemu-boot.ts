/**
 * Bench section: a real QEMU VM — boot to the first finished exec, then exec latency of `true` over
 * the persistent ssh2 connection next to a new OpenSSH client connection per command (the same VM,
 * the same run). Runs against dist/ (`npm run build` first). Standalone: `node bench/qemu-boot.ts [--short]`.
 */
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

export interface QemuBenchOptions {
  short: boolean
}

export interface QemuBenchRow {
  benchmark: string
  value: string
  note: string
}

type Dist = typeof import('../dist/index.js')
const loadDist = (): Promise<Dist> => import(new URL('../dist/index.js', import.meta.url).href) as Promise<Dist>

function percentile(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!
}

const ms = (value: number) => `${Math.round(value)} ms`

export async function runQemuBootBench(options: QemuBenchOptions): Promise<QemuBenchRow[]> {
  const { qemuProvider } = await loadDist()
  const execSamples = options.short ? 20 : 100
  const sshSamples = options.short ? 10 : 30
  const stateDir = mkdtempSync(join(tmpdir(), 'vmp-bench-'))
  const provider = qemuProvider({ stateDir })
  const name = `bench-qemu-${process.pid}`
  try {
    const probe = await provider.probe()
    if (!probe.usable) throw new Error(`qemu is not usable here: ${probe.reason}${probe.hint ? ` (${probe.hint})` : ''}`)
    const accel = probe.details?.accel ?? '?'

    const bootStarted = performance.now()
    const record = await provider.create({ name })
    const vm = await provider.connect(record)
    const first = await vm.exec('true')
    const bootMs = performance.now() - bootStarted
    if (first.exitCode !== 0) throw new Error(`first exec failed: ${first.stderr}`)

    const persistent: number[] = []
    for (let i = 0; i < execSamples; i++) {
      const started = performance.now()
      await vm.exec('true')
      persistent.push(performance.now() - started)
    }

    // OpenSSH with the guest's host key pinned in a throwaway known_hosts, like a careful user would.
    const knownHosts = join(stateDir, 'known_hosts')
    writeFileSync(knownHosts, `[127.0.0.1]:${record.data.port} ${record.data.hostKey}\n`)
    const sshArgs = ['-i', String(record.data.keyPath), '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes', '-o', `UserKnownHostsFile=${knownHosts}`, '-o', 'LogLevel=ERROR', '-p', String(record.data.port), 'root@127.0.0.1', 'true']
    const perConnection: number[] = []
    for (let i = 0; i < sshSamples; i++) {
      const started = performance.now()
      await promisify(execFile)('ssh', sshArgs, { timeout: 30_000 })
      perConnection.push(performance.now() - started)
    }
    await vm.close()
    const where = `${accel.toUpperCase()}, 1 vCPU, 256 MiB`
    return [
      { benchmark: 'qemu: boot to first exec (create + connect + exec)', value: ms(bootMs), note: where },
      { benchmark: 'qemu: exec `true`, persistent ssh2 connection', value: `p50 ${ms(percentile(persistent, 50))}, p90 ${ms(percentile(persistent, 90))}`, note: `${execSamples} samples` },
      { benchmark: 'qemu: exec `true`, new OpenSSH connection each', value: `p50 ${ms(percentile(perConnection, 50))}, p90 ${ms(percentile(perConnection, 90))}`, note: `${sshSamples} samples, same VM` },
    ]
  } finally {
    await provider.delete(name).catch(() => {})
    await provider.close()
    rmSync(stateDir, { recursive: true, force: true })
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  for (const row of await runQemuBootBench({ short: process.argv.includes('--short') })) console.log(`${row.benchmark} | ${row.value} | ${row.note}`)
}
