import { isVmPoolError } from '../../errors.js'
import { runProcess } from '../../transport/process-runner.js'
import type { ProviderProbe } from '../vm-provider.js'
import { findQemuBinary, type QemuMachine } from './qemu-command.js'
import { loadImage, type ResolvedImage } from './qemu-image.js'
import type { QemuMachineResolver } from './qemu-machine-resolver.js'
import type { QemuConfig } from './qemu-provider-options.js'
import { describeSnapshotState, getSnapshotSlot, readSnapshot } from './qemu-snapshot.js'

/** How long `qemu-system-x86_64 --version` may take. */
const VERSION_TIMEOUT_MS = 10_000

/** What `vm-pool doctor` prints for qemu: binary, version, image, accelerator (and why), snapshot state. */
export async function probeQemu(config: QemuConfig, resolver: QemuMachineResolver): Promise<ProviderProbe> {
  const { options } = config
  const details: Record<string, string> = { stateDir: config.root(), imageDir: config.imageDir() }
  const binary = await findQemuBinary(options.qemuBinary)
  if (!binary) {
    return { usable: false, reason: 'qemu-system-x86_64 not found on PATH', details, hint: 'sudo apt-get install qemu-system-x86 (or set the qemuBinary option)' }
  }
  details.binary = binary
  const version = await runProcess(binary, ['--version'], { timeoutMs: VERSION_TIMEOUT_MS, env: process.env }).catch(() => undefined)
  if (version?.exitCode === 0) details.version = version.stdout.split('\n')[0]!.replace(/^QEMU emulator version\s*/, '')
  let image: ResolvedImage
  try {
    image = await loadImage(options.image, config.imageDir())
    details.image = image.dir
    if (image.build.kernelVersion) details.kernel = image.build.kernelVersion
  } catch (error) {
    details.image = 'missing'
    return { usable: false, reason: isVmPoolError(error) ? error.shortMessage : String(error), details, hint: isVmPoolError(error) ? error.hint : undefined }
  }
  const accel = await resolver.resolveAccel(binary, image)
  details.accel = accel.accel
  details.accelReason = accel.reason
  const machine: QemuMachine = { accel: accel.accel, cpus: options.cpus, memoryMiB: Math.max(options.memoryMiB, image.minMemoryMiB), image }
  if (options.snapshot === false) details.snapshot = 'off (snapshot: false): every VM boots'
  else if (!resolver.canSnapshot(machine)) details.snapshot = 'not used: the image has a disk, whose writes a saved guest state does not hold; every VM boots'
  else {
    const slot = await getSnapshotSlot({ snapshotDir: config.snapshotDir(), machine, qemuBinary: binary })
    details.snapshot = describeSnapshotState(slot, await readSnapshot(slot)).text
  }
  return { usable: true, reason: `QEMU ${details.version ?? ''} with ${accel.accel.toUpperCase()}, image ${options.image} present`.replace(/\s+/g, ' '), details }
}
