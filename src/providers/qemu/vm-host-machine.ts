/**
 * What a VM on a VM host runs: the image read from the host (its manifest over SSH, paths resolved
 * there), the accelerator (KVM only when a test boot on the host proves it) and the machine shape.
 * The local counterpart is qemu-machine-resolver.ts; the machine is the same `QemuMachine` value.
 */
import { posix } from 'node:path'
import { formatZodError } from '../../config/zod-error.js'
import { VmPoolError } from '../../errors.js'
import { scaleTimeout } from '../../util/timeouts.js'
import type { VmSpec } from '../vm-provider.js'
import { KVM_PROBE_TIMEOUT_MS } from './accel-probe.js'
import type { QemuAccel, QemuMachine } from './qemu-command.js'
import { getImagePath, imageManifestSchema, type ResolvedImage } from './qemu-image.js'
import { REMOTE_DEFAULT_IMAGE_DIR, type QemuConfig } from './qemu-provider-options.js'
import type { SshVmHost } from './ssh-vm-host.js'
import { PROBE_KVM_SCRIPT, READ_IMAGE_SCRIPT } from './vm-host-scripts.js'

const GIB = 1024 ** 3
/** Reading a manifest over SSH. */
const READ_IMAGE_TIMEOUT_MS = 30_000

export class VmHostMachineResolver {
  readonly #config: QemuConfig
  readonly #host: SshVmHost
  readonly #accel = new Map<string, Promise<{ accel: QemuAccel; reason: string }>>()

  readonly #root: () => Promise<string>

  /** `root`: `<hostStateDir>/qemu` on the host, where the KVM verdict is cached. */
  constructor(config: QemuConfig, host: SshVmHost, root: () => Promise<string>) {
    this.#config = config
    this.#host = host
    this.#root = root
  }

  /** The QEMU binary as named on the host (looked up on its PATH there). */
  get binary(): string {
    return this.#config.options.qemuBinary ?? 'qemu-system-x86_64'
  }

  /** `<imageDir>` on the host, absolute. */
  imageDir(): Promise<string> {
    return this.#host.resolvePath(this.#config.vmHost?.imageDir ?? REMOTE_DEFAULT_IMAGE_DIR)
  }

  async loadImage(image: string): Promise<ResolvedImage> {
    const dir = getImagePath(image, await this.imageDir())
    const result = await this.#host.run(READ_IMAGE_SCRIPT, [dir, this.binary], { timeoutMs: scaleTimeout(READ_IMAGE_TIMEOUT_MS) })
    if (result.exitCode === 4) {
      throw new VmPoolError({ code: 'VMPOOL_PROVIDER_UNAVAILABLE', provider: 'qemu', operation: 'create', message: `${this.binary} is not on the PATH of VM host ${this.#host.id}`, hint: 'install it there: sudo apt-get install qemu-system-x86 (or set the qemuBinary option to its path there)' })
    }
    if (result.exitCode === 3) {
      throw new VmPoolError({ code: 'VMPOOL_IMAGE_MISSING', provider: 'qemu', operation: 'create', message: `image ${JSON.stringify(image)} not found on VM host ${this.#host.id}: ${dir}/manifest.json does not exist`, hint: 'build it there once: `npx vm-pool image build`, or copy an image dir there and set imageDir' })
    }
    if (result.exitCode !== 0) {
      throw new VmPoolError({ code: 'VMPOOL_EXEC_FAILED', provider: 'qemu', operation: 'create', message: `reading image ${JSON.stringify(image)} on VM host ${this.#host.id} failed (exit code ${result.exitCode}): ${result.stderr.trim() || 'no error output'}` })
    }
    let parsed
    try {
      const checked = imageManifestSchema.safeParse(JSON.parse(result.stdout))
      if (!checked.success) throw new Error(formatZodError(checked.error))
      parsed = checked.data
    } catch (error) {
      throw new VmPoolError({ code: 'VMPOOL_IMAGE_MISSING', provider: 'qemu', operation: 'create', message: `image ${JSON.stringify(image)} on VM host ${this.#host.id} has an invalid manifest ${dir}/manifest.json: ${(error as Error).message}`, cause: error })
    }
    const abs = (path: string | undefined) => (path === undefined ? undefined : posix.resolve(dir, path))
    return { ...parsed, dir, kernel: abs(parsed.kernel), initrd: abs(parsed.initrd), disk: abs(parsed.disk), seed: abs(parsed.seed), clientKey: abs(parsed.clientKey)! }
  }

  /** `accel: 'auto'`: KVM only when a test boot on the host reaches the guest kernel (asked once per kernel). */
  resolveAccel(image: ResolvedImage): Promise<{ accel: QemuAccel; reason: string }> {
    const { accel } = this.#config.options
    if (accel !== 'auto') return Promise.resolve({ accel, reason: `accel: '${accel}' was chosen in the options` })
    if (!image.kernel) return Promise.resolve({ accel: 'tcg', reason: 'no kernel to test-boot KVM with on the VM host: using TCG emulation' })
    let probed = this.#accel.get(image.kernel)
    if (!probed) {
      const probeMs = scaleTimeout(KVM_PROBE_TIMEOUT_MS)
      probed = this.#root()
        .then((root) => this.#host.run(PROBE_KVM_SCRIPT, [this.binary, image.kernel!, posix.join(root, 'accel-probe.txt'), String(Math.ceil(probeMs / 1000))], { timeoutMs: probeMs + scaleTimeout(READ_IMAGE_TIMEOUT_MS) }))
        .then((result) =>
          result.stdout.trim() === 'kvm' ? { accel: 'kvm' as const, reason: 'KVM works on the VM host (a test boot reached the guest kernel)' } : { accel: 'tcg' as const, reason: `KVM on the VM host: ${result.timedOut ? 'the probe timed out' : result.stdout.trim() || 'not usable'}: using TCG emulation` },
        )
      this.#accel.set(image.kernel, probed)
      probed.catch(() => this.#accel.delete(image.kernel!))
    }
    return probed
  }

  async resolve(spec: Pick<VmSpec, 'image' | 'cpus' | 'memoryMiB' | 'diskGiB'>): Promise<QemuMachine> {
    const { options } = this.#config
    const image = await this.loadImage(spec.image ?? options.image)
    const { accel } = await this.resolveAccel(image)
    const machine: QemuMachine = { accel, cpus: spec.cpus ?? options.cpus, memoryMiB: Math.max(spec.memoryMiB ?? options.memoryMiB, image.minMemoryMiB), image }
    if (image.disk && spec.diskGiB !== undefined) machine.diskBytes = Math.max(spec.diskGiB * GIB, image.diskVirtualBytes ?? 0)
    return machine
  }
}
