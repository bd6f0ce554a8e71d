/**
 * Bench section: a real QEMU VM — a cold boot to the first finished exec next to a VM restored from
 * a snapshot (create + connect + first exec, after the snapshot was built once), then exec latency
 * of `true` over the persistent ssh2 connection next to a new OpenSSH client connection per command
 * (the same VM, the same run). Runs against dist/ (`npm run build` first). Standalone: `node bench/qemu-boot.ts [--short]`.
 */
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { loadDist, percentile } from './bench-util.ts'

export interface QemuBenchOptions {
  short: boolean
}

export interface QemuBenchRow {
  benchmark: string
  value: string
  note: string
}



const ms = (value: number) => `${Math.round(value)} ms`

export async function runQemuBootBench(options: QemuBenchOptions): Promise<QemuBenchRow[]> {
  const { qemuProvider } = await loadDist()
  const execSamples = options.short ? 20 : 100
  const sshSamples = options.short ? 10 : 30
  const stateDir = mkdtempSync(join(tmpdir(), 'vmp-bench-'))
  // The cold-boot VM: snapshots off. The restored ones: a snapshot dir of their own, so its build is measured too.
  const provider = qemuProvider({ stateDir, snapshot: false })
  const restoring = qemuProvider({ stateDir, snapshotDir: join(stateDir, 'snapshots') })
  const restoreSamples = options.short ? 3 : 5
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

    // The first restore builds the snapshot (a template boot + save); the samples after it are what every later create costs.
    const buildStarted = performance.now()
    await restoring.create({ name: `${name}-r0` })
    const buildMs = performance.now() - buildStarted
    await restoring.delete(`${name}-r0`)
    const restores: number[] = []
    for (let i = 1; i <= restoreSamples; i++) {
      const started = performance.now()
      const restored = await restoring.create({ name: `${name}-r${i}` })
      const clone = await restoring.connect(restored)
      const answer = await clone.exec('true')
      restores.push(performance.now() - started)
      if (answer.exitCode !== 0 || !restored.data.restoredFrom) throw new Error(`restore ${i} did not work: ${JSON.stringify(restored.data)}`)
      await clone.close()
      await restoring.delete(`${name}-r${i}`)
    }
    const probe2 = await restoring.probe()
    const stateSize = /\((\d+ MB)/.exec(probe2.details?.snapshot ?? '')?.[1] ?? '?'
    const restoreMs = percentile(restores, 50)

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
      { benchmark: 'qemu: cold boot to first exec (create + connect + exec)', value: ms(bootMs), note: where },
      { benchmark: 'qemu: snapshot restore to first exec (fresh VM)', value: `p50 ${ms(restoreMs)} (${Math.round((restoreMs / bootMs) * 100)}% of a cold boot)`, note: `${restoreSamples} samples, min ${ms(Math.min(...restores))}, max ${ms(Math.max(...restores))}; state file ${stateSize}` },
      { benchmark: 'qemu: snapshot build (once per image + machine)', value: ms(buildMs), note: 'template boot + save + the first restore' },
      { benchmark: 'qemu: exec `true`, persistent ssh2 connection', value: `p50 ${ms(percentile(persistent, 50))}, p90 ${ms(percentile(persistent, 90))}`, note: `${execSamples} samples` },
      { benchmark: 'qemu: exec `true`, new OpenSSH connection each', value: `p50 ${ms(percentile(perConnection, 50))}, p90 ${ms(percentile(perConnection, 90))}`, note: `${sshSamples} samples, same VM` },
    ]
  } finally {
    await provider.delete(name).catch(() => {})
    for (const info of await restoring.list().catch(() => [])) await restoring.delete(info.name).catch(() => {})
    await provider.close()
    await restoring.close()
    rmSync(stateDir, { recursive: true, force: true })
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  for (const row of await runQemuBootBench({ short: process.argv.includes('--short') })) console.log(`${row.benchmark} | ${row.value} | ${row.note}`)
}
