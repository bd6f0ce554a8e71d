/**
 * Bench section: working inside one QEMU VM (docs/providers.md, the Vm contract) — 24 concurrent
 * `sleep 1` execs against one, exec `true` latency, putFile/getFile of 50 MB, and HTTP through
 * forwardPort (the SSH forward and QEMU's own hostfwd side by side) to busybox httpd in the guest.
 * Runs against dist/ (`npm run build` first). Standalone: `node bench/inside-vm.ts [--short]`.
 */
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { loadDist, percentile } from './bench-util.ts'
import type { BenchRow } from './run.ts'

const CONCURRENT = 24
const FILE_MB = 50
/** The guest keeps the 50 MB files in RAM (its root is an initramfs): room for two of them. */
const GUEST_MEMORY_MIB = 512

const ms = (value: number) => `${Math.round(value)} ms`
const rate = (bytes: number, elapsedMs: number) => `${((bytes / 1024 / 1024) / (elapsedMs / 1000)).toFixed(1)} MB/s`

/** GET http://127.0.0.1:port/path; resolves with the body length once it is all read. */
function httpGet(port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let length = 0
      res.on('data', (chunk: Buffer) => (length += chunk.length))
      res.on('end', () => (res.statusCode === 200 ? resolve(length) : reject(new Error(`HTTP ${res.statusCode}`))))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

async function waitForHttp(port: number): Promise<void> {
  const deadline = Date.now() + 60_000
  for (;;) {
    try {
      await httpGet(port, '/small.txt')
      return
    } catch (error) {
      if (Date.now() > deadline) throw error
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
  }
}

export async function runInsideVmBench(options: { short: boolean }): Promise<BenchRow[]> {
  const { qemuProvider } = await loadDist()
  const stateDir = mkdtempSync(join(tmpdir(), 'vmp-bench-inside-'))
  const provider = qemuProvider({ stateDir, snapshot: false })
  const name = `bench-inside-${process.pid}`
  const samples = options.short ? 20 : 100
  const httpSamples = options.short ? 20 : 50
  try {
    const probe = await provider.probe()
    if (!probe.usable) throw new Error(`qemu is not usable here: ${probe.reason}${probe.hint ? ` (${probe.hint})` : ''}`)
    const where = `${(probe.details?.accel ?? '?').toUpperCase()}, 1 vCPU`
    const vm = await provider.connect(await provider.create({ name, memoryMiB: GUEST_MEMORY_MIB }))
    await vm.exec('true')

    const sleeps = async () => {
      const started = performance.now()
      const results = await Promise.all(Array.from({ length: CONCURRENT }, () => vm.exec('sleep 1', { timeoutMs: 120_000 })))
      if (results.some((result) => result.exitCode !== 0)) throw new Error('a concurrent sleep failed')
      return performance.now() - started
    }
    const oneStarted = performance.now()
    await vm.exec('sleep 1')
    const oneMs = performance.now() - oneStarted
    const coldMs = await sleeps()
    const warmMs = await sleeps()

    const latencies: number[] = []
    for (let i = 0; i < samples; i++) {
      const started = performance.now()
      await vm.exec('true')
      latencies.push(performance.now() - started)
    }

    const data = randomBytes(FILE_MB * 1024 * 1024)
    await vm.exec('mkdir -p /tmp/www && echo ok > /tmp/www/small.txt')
    const putStarted = performance.now()
    await vm.putFile('/tmp/www/big.bin', data)
    const putMs = performance.now() - putStarted
    const getStarted = performance.now()
    const back = await vm.getFile('/tmp/www/big.bin')
    const getMs = performance.now() - getStarted
    if (Buffer.compare(back, data) !== 0) throw new Error('getFile returned other bytes than putFile wrote')

    // 0.0.0.0 so QEMU's hostfwd (which reaches the guest's network address) gets there too.
    const stop = new AbortController()
    const server = vm.exec('exec busybox httpd -f -p 0.0.0.0:8080 -h /tmp/www', { signal: stop.signal }).catch(() => undefined)
    const rows: BenchRow[] = [
      { benchmark: `qemu: ${CONCURRENT} concurrent \`sleep 1\` on one VM, new connections`, value: `${(coldMs / oneMs).toFixed(2)}x one exec (${ms(coldMs)})`, note: `one \`sleep 1\`: ${ms(oneMs)}; ${where}` },
      { benchmark: `qemu: ${CONCURRENT} concurrent \`sleep 1\` on one VM, kept connections`, value: `${(warmMs / oneMs).toFixed(2)}x one exec (${ms(warmMs)})`, note: 'the same VM right after' },
      { benchmark: 'qemu: exec `true`, persistent connection (inside-vm)', value: `p50 ${ms(percentile(latencies, 50))}, p90 ${ms(percentile(latencies, 90))}`, note: `${samples} samples` },
      { benchmark: `qemu: putFile ${FILE_MB} MB`, value: rate(data.length, putMs), note: ms(putMs) },
      { benchmark: `qemu: getFile ${FILE_MB} MB`, value: rate(data.length, getMs), note: ms(getMs) },
    ]
    try {
      for (const via of ['ssh', 'hostfwd'] as const) {
        const forward = await vm.forwardPort(8080, { via })
        try {
          await waitForHttp(forward.port)
          const gets: number[] = []
          for (let i = 0; i < httpSamples; i++) {
            const started = performance.now()
            await httpGet(forward.port, '/small.txt')
            gets.push(performance.now() - started)
          }
          const bigStarted = performance.now()
          const length = await httpGet(forward.port, '/big.bin')
          const bigMs = performance.now() - bigStarted
          if (length !== data.length) throw new Error(`${via}: got ${length} bytes of ${data.length}`)
          rows.push(
            { benchmark: `qemu: forwardPort (${via}) HTTP GET, small file`, value: `p50 ${ms(percentile(gets, 50))}, p90 ${ms(percentile(gets, 90))}`, note: `${httpSamples} requests, a new TCP connection each, busybox httpd` },
            { benchmark: `qemu: forwardPort (${via}) HTTP GET, ${FILE_MB} MB`, value: rate(length, bigMs), note: ms(bigMs) },
          )
        } finally {
          await forward.close()
        }
      }
    } finally {
      stop.abort()
      await server
    }
    await vm.close()
    return rows
  } finally {
    await provider.delete(name).catch(() => {})
    await provider.close()
    rmSync(stateDir, { recursive: true, force: true })
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  for (const row of await runInsideVmBench({ short: process.argv.includes('--short') })) console.log(`${row.benchmark} | ${row.value} | ${row.note}`)
}
