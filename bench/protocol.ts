/**
 * Bench section: what `vm-pool protocol` adds to an exec. One helper leases one VM; this process connects to
 * the SAME VM with the provider directly. `true` is run alternately through the protocol (JSON line in,
 * answer out, over the helper's stdio) and directly, so load on the machine hits both alike; the row is the
 * p50 of each and the difference (goal: <= 5 ms added). Runs against dist/ (`npm run build` first).
 * Standalone: `node bench/protocol.ts [--short] [--provider fake]`.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { ProtocolClient } from '../test/helpers/protocol-client.ts'
import { loadDist, percentile } from './bench-util.ts'

export interface ProtocolBenchOptions {
  provider: string
  short: boolean
}

export interface ProtocolBenchRow {
  benchmark: string
  value: string
  note: string
}

/** The budget the protocol may add to an exec's p50. */
const GOAL_ADDED_MS = 5
const ms = (value: number) => `${value.toFixed(1)} ms`

export async function runProtocolBench(options: ProtocolBenchOptions): Promise<ProtocolBenchRow[]> {
  const { createProvider } = await loadDist()
  const samples = options.short ? 30 : 200
  // A short path: QEMU's monitor socket lives in the state dir.
  const stateDir = mkdtempSync(join(tmpdir(), 'vmp-bench-proto-'))
  const providerOptions = { stateDir }
  const client = new ProtocolClient({ env: { VM_POOL_PROVIDER: options.provider, VM_POOL_PROVIDER_OPTIONS: JSON.stringify(providerOptions) } })
  const direct = await createProvider(options.provider, providerOptions)
  try {
    await client.hello({})
    const lease = await client.request<{ vm: string; record: Parameters<typeof direct.connect>[0] }>('acquire', { key: 'bench' })
    const vm = await direct.connect(lease.record)
    const viaProtocol = async () => {
      const result = await client.request<{ exitCode: number }>('exec', { vm: lease.vm, command: 'true' })
      if (result.exitCode !== 0) throw new Error(`exec through the protocol exited with ${result.exitCode}`)
    }
    const viaNode = async () => {
      const result = await vm.exec('true')
      if (result.exitCode !== 0) throw new Error(`direct exec exited with ${result.exitCode}`)
    }
    // Warm both paths (connections, JIT) before measuring.
    for (let i = 0; i < 3; i++) {
      await viaProtocol()
      await viaNode()
    }
    const timings = { protocol: [] as number[], direct: [] as number[] }
    for (let i = 0; i < samples; i++) {
      const order = i % 2 === 0 ? (['protocol', 'direct'] as const) : (['direct', 'protocol'] as const)
      for (const path of order) {
        const started = performance.now()
        await (path === 'protocol' ? viaProtocol() : viaNode())
        timings[path].push(performance.now() - started)
      }
    }
    await vm.close?.()
    await client.request('drain')
    const p50 = { protocol: percentile(timings.protocol, 50), direct: percentile(timings.direct, 50) }
    const added = p50.protocol - p50.direct
    return [
      {
        benchmark: `protocol: exec \`true\` p50 (${options.provider})`,
        value: `direct ${ms(p50.direct)}, via protocol ${ms(p50.protocol)}, added ${ms(added)}`,
        note: `goal <= ${GOAL_ADDED_MS} ms added (${added <= GOAL_ADDED_MS ? 'met' : 'NOT met'}); same VM, ${samples} samples each, alternating; p99 direct ${ms(percentile(timings.direct, 99))}, via protocol ${ms(percentile(timings.protocol, 99))}`,
      },
    ]
  } finally {
    await client.close().catch(() => {})
    await direct.close?.()
    rmSync(stateDir, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 })
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { short: { type: 'boolean' }, provider: { type: 'string' } } })
  const rows = await runProtocolBench({ provider: values.provider ?? process.env.VM_POOL_PROVIDER ?? 'qemu', short: values.short ?? false })
  for (const row of rows) console.log(`${row.benchmark} | ${row.value} | ${row.note}`)
}
