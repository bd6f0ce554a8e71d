import { isAbsolute, join, resolve } from 'node:path'
import { z } from 'zod'
import { formatZodError } from '../../config/zod-error.js'
import { invalidOptions } from '../../errors.js'
import { getStateDir } from '../../util/state-dir.js'
import { scaleTimeout } from '../../util/timeouts.js'
import { BOOT_TIMEOUT_MS } from './cold-boot-strategy.js'
import { DEFAULT_IMAGE_NAME, getImageDir } from './qemu-image.js'

export const qemuProviderOptionsSchema = z
  .object({
    /** An image name under `imageDir`, or an absolute path to an image directory. @default 'minimal' */
    image: z.string().min(1).default(DEFAULT_IMAGE_NAME),
    /** @default `VM_POOL_IMAGE_DIR`, else `<VM_POOL_STATE_DIR or ~/.cache/vm-pool>/images` */
    imageDir: z.string().min(1).optional(),
    /** vCPUs per VM. @default 1 */
    cpus: z.number().int().min(1).max(64).default(1),
    /** Guest memory. @default 256 */
    memoryMiB: z.number().int().min(64).max(1_048_576).default(256),
    /** `auto` uses KVM only when a test boot proves it works, else TCG. @default 'auto' */
    accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
    /** VM state dirs live in `<stateDir>/qemu/<name>/`. @default `VM_POOL_STATE_DIR` or `~/.cache/vm-pool` */
    stateDir: z.string().min(1).optional(),
    /** @default `qemu-system-x86_64` on PATH */
    qemuBinary: z.string().min(1).optional(),
    /** @default BOOT_TIMEOUT_MS scaled by VM_POOL_TIMEOUT_SCALE */
    bootTimeoutMs: z.number().int().positive().optional(),
    /**
     * `auto`: boot the image once, save the running guest, and start every VM by restoring that
     * state (about 1 s instead of a boot; a disk image's VMs each get an overlay on the template's frozen disk). Also enables
     * `reset(name)` (`keepWarm: { reset: 'snapshot' }`). `false`: every VM boots. @default 'auto'
     */
    snapshot: z.union([z.literal('auto'), z.literal(false)]).default('auto'),
    /** Where snapshots live, one dir per image + machine shape. @default `<imageDir>/.snapshots` */
    snapshotDir: z.string().min(1).optional(),
  })
  .strict()

export type QemuProviderOptions = z.input<typeof qemuProviderOptionsSchema>

/** The validated options plus the paths and timeouts derived from them (read from the environment when asked, not at import). */
export interface QemuConfig {
  readonly options: Readonly<z.output<typeof qemuProviderOptionsSchema>>
  /** `<stateDir>/qemu`: one dir per VM, and the accel probe's cache. */
  root(): string
  imageDir(): string
  snapshotDir(): string
  bootTimeoutMs(): number
}

export function resolveQemuConfig(raw: QemuProviderOptions): QemuConfig {
  const parsed = qemuProviderOptionsSchema.safeParse(raw)
  if (!parsed.success) throw invalidOptions(`invalid qemuProvider options: ${formatZodError(parsed.error, raw)}`, { provider: 'qemu' })
  const options = Object.freeze(parsed.data)
  const imageDir = () => getImageDir(options.imageDir)
  return Object.freeze({
    options,
    root: () => join(getStateDir(options.stateDir), 'qemu'),
    imageDir,
    snapshotDir: () => (options.snapshotDir ? resolve(options.snapshotDir) : join(imageDir(), '.snapshots')),
    bootTimeoutMs: () => options.bootTimeoutMs ?? scaleTimeout(BOOT_TIMEOUT_MS),
  })
}

/**
 * What makes a VM of this provider different (`VmProvider.fingerprint`): the spec with these options applied,
 * as `QemuMachineResolver` applies them (its image's minimum memory is applied there, at boot, from the image).
 * The image folder counts: `minimal` in two folders are two images.
 */
export function getQemuFingerprint(config: QemuConfig, spec: { image?: string | undefined; cpus?: number | undefined; memoryMiB?: number | undefined; diskGiB?: number | undefined }): Record<string, unknown> {
  const image = spec.image ?? config.options.image
  return {
    image: isAbsolute(image) ? image : join(config.imageDir(), image),
    cpus: spec.cpus ?? config.options.cpus,
    memoryMiB: spec.memoryMiB ?? config.options.memoryMiB,
    accel: config.options.accel,
    snapshot: config.options.snapshot,
    qemuBinary: config.options.qemuBinary ?? 'qemu-system-x86_64',
  }
}
