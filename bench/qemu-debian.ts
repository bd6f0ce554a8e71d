/**
 * Bench section (opt-in: `npm run bench -- --only qemu-debian`, or `--debian` beside the others): the
 * debian-12 image — a cold boot to the first finished exec next to a VM restored from a snapshot
 * (create + connect + first exec; each restored VM on its own disk overlay), in one run. Needs the
 * image (`sudo env "PATH=$PATH" npx vm-pool image build debian-12`) in `BENCH_DEBIAN_IMAGE_DIR`,
 * `VM_POOL_IMAGE_DIR` or the default image dir. Minutes, not seconds, under TCG: a Debian boot with systemd takes 1-2 min.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { homedir, tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadDist, percentile } from './bench-util.ts'
import type { BenchOptions, BenchRow } from './run.ts'

const ms = (value: number) => `${Math.round(value)} ms`
const IMAGE = 'debian-12'
/** A cold Debian boot on a busy 2-core TCG host can take several minutes. */
const DEBIAN_BENCH_BOOT_TIMEOUT_MS = 1_800_000

export async function runQemuDebianBench(options: Pick<BenchOptions, 'short'>): Promise<BenchRow[]> {
  const { qemuProvider } = await loadDist()
  // BENCH_DEBIAN_IMAGE_DIR: where the debian-12 image is when it is not beside the minimal one.
  const imageDir = process.env.BENCH_DEBIAN_IMAGE_DIR ?? process.env.VM_POOL_IMAGE_DIR ?? join(process.env.VM_POOL_STATE_DIR ?? join(homedir(), '.cache', 'vm-pool'), 'images')
  if (!existsSync(join(imageDir, IMAGE, 'manifest.json'))) {
    return [{ benchmark: `qemu ${IMAGE}`, value: 'skipped', note: `no ${IMAGE} image in ${imageDir}: sudo env "PATH=$PATH" npx vm-pool image build ${IMAGE}` }]
  }
  const stateDir = mkdtempSync(join(tmpdir(), 'vmp-bench-deb-'))
  const common = { stateDir, imageDir, image: IMAGE, bootTimeoutMs: DEBIAN_BENCH_BOOT_TIMEOUT_MS }
  const cold = qemuProvider({ ...common, snapshot: false })
  // Its own snapshot dir, so the template build is measured too.
  const restoring = qemuProvider({ ...common, snapshotDir: join(stateDir, 'snapshots') })
  const samples = options.short ? 2 : 3
  const name = `bench-deb-${process.pid}`
  const firstExec = async (provider: typeof cold, vmName: string) => {
    const started = performance.now()
    const record = await provider.create({ name: vmName })
    const vm = await provider.connect(record)
    const answer = await vm.exec('true')
    const elapsed = performance.now() - started
    if (answer.exitCode !== 0) throw new Error(`first exec in ${vmName} failed: ${answer.stderr}`)
    await vm.close()
    await provider.delete(vmName)
    return { elapsed, restoredFrom: record.data.restoredFrom }
  }
  try {
    const coldMs = (await firstExec(cold, `${name}-c`)).elapsed
    const buildMs = (await firstExec(restoring, `${name}-r0`)).elapsed
    const restores: number[] = []
    for (let i = 1; i <= samples; i++) {
      const { elapsed, restoredFrom } = await firstExec(restoring, `${name}-r${i}`)
      if (!restoredFrom) throw new Error(`${name}-r${i} was not restored from a snapshot`)
      restores.push(elapsed)
    }
    const restoreMs = percentile(restores, 50)
    const probe = await restoring.probe()
    const stateSize = /\((\d+ MB)/.exec(probe.details?.snapshot ?? '')?.[1] ?? '?'
    return [
      { benchmark: `qemu ${IMAGE}: cold boot to first exec (create + connect + exec)`, value: ms(coldMs), note: 'systemd + sshd; its own disk overlay' },
      { benchmark: `qemu ${IMAGE}: snapshot restore to first exec`, value: `p50 ${ms(restoreMs)} (**${Math.round((restoreMs / coldMs) * 100)}% of a cold boot**)`, note: `${samples} samples, ${restores.map((sample) => Math.round(sample)).join('/')} ms; state file ${stateSize}; each on its own overlay of the frozen disk` },
      { benchmark: `qemu ${IMAGE}: snapshot build (once per image + machine)`, value: ms(buildMs), note: 'template boot + save + first restore' },
    ]
  } finally {
    await cold.close()
    await restoring.close()
    rmSync(stateDir, { recursive: true, force: true })
  }
}
