import { VmPoolError } from '../../errors.js'
import type { VmSpec } from '../vm-provider.js'
import { probeAccel, type AccelProbeResult } from './accel-probe.js'
import { ColdBootStrategy } from './cold-boot-strategy.js'
import { findQemuBinary, type QemuMachine } from './qemu-command.js'
import { loadImage, type ResolvedImage } from './qemu-image.js'
import type { QemuConfig } from './qemu-provider-options.js'
import { SnapshotRestoreStrategy } from './snapshot-restore-strategy.js'
import type { StartStrategy } from './start-strategy.js'

const GIB = 1024 ** 3

/**
 * From options and a spec to what runs: the QEMU binary, the machine (image, accelerator, vCPUs,
 * memory) and the start strategy for it. Create and reset ask the same resolver, so a reset VM gets
 * exactly the machine its snapshot was saved from.
 */
export class QemuMachineResolver {
  readonly #config: QemuConfig

  constructor(config: QemuConfig) {
    this.#config = config
  }

  async requireBinary(operation: string): Promise<string> {
    const { qemuBinary } = this.#config.options
    const binary = await findQemuBinary(qemuBinary)
    if (binary) return binary
    throw new VmPoolError({
      code: 'VMPOOL_PROVIDER_UNAVAILABLE',
      provider: 'qemu',
      operation,
      message: qemuBinary ? `QEMU binary ${qemuBinary} is not executable` : 'qemu-system-x86_64 was not found on PATH',
      hint: 'install it: sudo apt-get install qemu-system-x86 (or set the qemuBinary option)',
    })
  }

  async resolveAccel(binary: string, image: ResolvedImage): Promise<AccelProbeResult> {
    const { accel } = this.#config.options
    if (accel !== 'auto') return { accel, reason: `accel: '${accel}' was chosen in the options` }
    return probeAccel({ qemuBinary: binary, kernel: image.kernel, cacheDir: this.#config.root() })
  }

  /** The machine a spec asks for: create and reset must agree exactly (a restore needs the same machine). */
  async resolve(spec: Pick<VmSpec, 'image' | 'cpus' | 'memoryMiB' | 'diskGiB'>, binary: string): Promise<QemuMachine> {
    const { options } = this.#config
    const image = await loadImage(spec.image ?? options.image, this.#config.imageDir())
    const { accel } = await this.resolveAccel(binary, image)
    const machine: QemuMachine = { accel, cpus: spec.cpus ?? options.cpus, memoryMiB: Math.max(spec.memoryMiB ?? options.memoryMiB, image.minMemoryMiB), image }
    // diskGiB sizes the VM's own disk overlay (never below the image's disk); the initramfs image has no disk to size.
    if (image.disk && spec.diskGiB !== undefined) machine.diskBytes = Math.max(spec.diskGiB * GIB, image.diskVirtualBytes ?? 0)
    return machine
  }

  /**
   * Initramfs images keep all guest state in RAM; disk images get a frozen copy of the template's disk
   * beside the saved state, and each restored VM its own overlay on it (snapshot-restore-strategy.ts).
   */
  canSnapshot(machine: QemuMachine): boolean {
    return this.#config.options.snapshot === 'auto' && (machine.image.kernel !== undefined || machine.image.disk !== undefined)
  }

  /** A snapshot restore when the machine allows it (its template a cold boot), else a cold boot. */
  startStrategy(machine: QemuMachine, binary: string): StartStrategy {
    const bootTimeoutMs = this.#config.bootTimeoutMs()
    const bootTimeoutFromOption = this.#config.bootTimeoutFromOption()
    const vmContext = { binary, bootTimeoutMs, bootTimeoutFromOption, pathHint: 'use a shorter stateDir / VM_POOL_STATE_DIR' }
    if (!this.canSnapshot(machine)) return new ColdBootStrategy(vmContext, machine)
    const template = new ColdBootStrategy({ binary, bootTimeoutMs, bootTimeoutFromOption, pathHint: 'use a shorter snapshotDir (or VM_POOL_IMAGE_DIR)' }, machine, { readyCommand: () => 'true' })
    return new SnapshotRestoreStrategy(vmContext, machine, { snapshotDir: this.#config.snapshotDir(), template })
  }
}
