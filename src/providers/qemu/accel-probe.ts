import { access, constants, mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { runProcess } from '../../transport/process-runner.js'
import { writeFileAtomic } from '../../util/fs-atomic.js'
import { createDebug } from '../../util/debug.js'
import { scaleTimeout } from '../../util/timeouts.js'
import { getAccelArgs, type QemuAccel } from './qemu-command.js'

/** How long a KVM test boot may take to reach the guest kernel's panic (KVM does it in well under a second). */
export const KVM_PROBE_TIMEOUT_MS = 15_000

const debug = createDebug('vm-pool:qemu')

export interface AccelProbeResult {
  accel: QemuAccel
  /** Why this accelerator: one line for `vm-pool doctor` and debug output. */
  reason: string
}

/** Per process: the probe boots a kernel, do it once. Keyed by binary + kernel. */
const probeCache = new Map<string, Promise<AccelProbeResult>>()

/**
 * Is KVM really usable? `/dev/kvm` existing is not enough: on some hosts (nested virtualization,
 * microVM hosts) QEMU aborts on an MSR write or the guest hangs. So boot the image's kernel under
 * KVM with no root file system: a working KVM reaches the kernel's "VFS: Unable to mount root" panic
 * within a second and QEMU exits (-no-reboot). The answer is cached per process and on disk per host
 * boot (`/proc/sys/kernel/random/boot_id`), since it does not change until the host reboots.
 */
export function probeAccel(options: { qemuBinary: string; kernel: string | undefined; cacheDir: string }): Promise<AccelProbeResult> {
  const key = `${options.qemuBinary}\0${options.kernel ?? ''}`
  let cached = probeCache.get(key)
  if (!cached) {
    cached = probeAccelUncached(options)
    probeCache.set(key, cached)
  }
  return cached
}

async function probeAccelUncached(options: { qemuBinary: string; kernel: string | undefined; cacheDir: string }): Promise<AccelProbeResult> {
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK)
  } catch {
    return { accel: 'tcg', reason: '/dev/kvm is missing or not accessible to this user: using TCG emulation' }
  }
  if (!options.kernel) return { accel: 'tcg', reason: 'no kernel to test-boot KVM with: using TCG emulation (set accel: "kvm" to force KVM)' }
  const bootId = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => '')).trim()
  const cacheFile = join(options.cacheDir, 'accel-probe.json')
  const cacheKey = `${bootId}\0${options.qemuBinary}\0${options.kernel}`
  try {
    const stored = JSON.parse(await readFile(cacheFile, 'utf8')) as { key: string; result: AccelProbeResult }
    if (bootId && stored.key === cacheKey) return stored.result
  } catch {
    // no usable cache: probe
  }
  const timeoutMs = scaleTimeout(KVM_PROBE_TIMEOUT_MS)
  const started = performance.now()
  const run = await runProcess(
    options.qemuBinary,
    [...getAccelArgs('kvm'), '-m', '128', '-nodefaults', '-display', 'none', '-no-reboot', '-kernel', options.kernel, '-append', 'console=ttyS0 panic=-1 loglevel=1', '-serial', 'stdio'],
    { timeoutMs, env: process.env },
  )
  const elapsed = Math.round(performance.now() - started)
  let result: AccelProbeResult
  if (/Kernel panic/.test(run.stdout)) {
    result = { accel: 'kvm', reason: `KVM works (a test boot reached the guest kernel in ${elapsed} ms)` }
  } else if (run.timedOut) {
    result = { accel: 'tcg', reason: `KVM is present but a test guest hung for ${timeoutMs} ms: using TCG emulation` }
  } else {
    const why = (run.stderr.trim().split('\n').find((line) => /error|failed|assert/i.test(line)) ?? run.stderr.trim().split('\n')[0] ?? `exit code ${run.exitCode}`).replace(/^qemu-system-x86_64:\s*/, '')
    result = { accel: 'tcg', reason: `KVM is present but unusable (${why}): using TCG emulation` }
  }
  debug('accel probe: %s', result.reason)
  await mkdir(options.cacheDir, { recursive: true, mode: 0o700 })
  await writeFileAtomic(cacheFile, JSON.stringify({ key: cacheKey, result }), 0o644).catch(() => {})
  return result
}
