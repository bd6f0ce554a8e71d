import { readFile } from 'node:fs/promises'
import { userInfo } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'
import { z } from 'zod'
import { formatZodError } from '../../config/zod-error.js'
import { invalidOptions } from '../../errors.js'
import { normalizeHostKeyPin } from '../../transport/ssh-keys.js'
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
    /**
     * A VM host: QEMU runs there, started over SSH (it needs QEMU and the image, nothing else), and the
     * guest's SSH is reached through that SSH connection, never through a port opened on the network.
     * `imageDir` is then a path on the VM host. docs/providers.md ("QEMU on a VM host").
     */
    host: z.string().min(1).optional(),
    /** The SSH user on the VM host. @default the user running vm-pool (`USER`) */
    user: z.string().min(1).optional(),
    /** The VM host's SSH port. @default 22 */
    port: z.number().int().min(1).max(65_535).optional(),
    /** The private key for the VM host (unencrypted OpenSSH or PEM text). Never written to a record, lease, marker or log. */
    privateKey: z.union([z.string().min(1), z.instanceof(Buffer)]).optional(),
    /** A file on this machine holding the VM host's private key: what to pass through the CLI and the reaper. */
    privateKeyFile: z.string().min(1).optional(),
    /** The VM host's SSH host key, pinned: an OpenSSH public key line or a `SHA256:` fingerprint. Required with `host`. */
    hostKey: z.string().min(1).optional(),
    /** Where the VM dirs live on the VM host (`<hostStateDir>/qemu/<name>`). @default `~/.cache/vm-pool` of the SSH user */
    hostStateDir: z.string().min(1).optional(),
  })
  .strict()
  .superRefine((options, context) => {
    if (options.host === undefined) {
      for (const key of ['user', 'port', 'privateKey', 'privateKeyFile', 'hostKey', 'hostStateDir'] as const) {
        if (options[key] !== undefined) context.addIssue({ code: 'custom', path: [key], message: `${key} is an option of a VM host: give \`host\` too (or leave ${key} out)` })
      }
      return
    }
    if (options.hostKey === undefined) context.addIssue({ code: 'custom', path: ['hostKey'], message: 'a VM host needs its pinned host key (`ssh-keyscan -t ed25519 HOST` prints it)' })
    if (options.privateKey !== undefined && options.privateKeyFile !== undefined) context.addIssue({ code: 'custom', path: ['privateKeyFile'], message: 'give privateKey or privateKeyFile, not both' })
    if (options.stateDir !== undefined) context.addIssue({ code: 'custom', path: ['stateDir'], message: 'with a VM host the VM dirs live on that host: use hostStateDir' })
    if (options.snapshotDir !== undefined) context.addIssue({ code: 'custom', path: ['snapshotDir'], message: 'snapshots on a VM host live in <hostStateDir>/qemu-snapshots there' })
  })

export type QemuProviderOptions = z.input<typeof qemuProviderOptionsSchema>

/** Holds the VM host's private key when neither `privateKey` nor `privateKeyFile` is given (a CI secret). */
export const VM_HOST_PRIVATE_KEY_ENV = 'VM_POOL_VM_HOST_PRIVATE_KEY'

/** The default image folder on a VM host, as written in fingerprints (resolved against the SSH user's home there). */
export const REMOTE_DEFAULT_IMAGE_DIR = '~/.cache/vm-pool/images'

/** Where QEMU runs when it is not this machine; the private key stays in memory, out of every record. */
export interface VmHostConfig {
  host: string
  port: number
  user: string
  /** Normalized `SHA256:` fingerprint of the pinned host key. */
  hostKeyFingerprint: string
  /** As given (a public key line or a fingerprint): what records carry. */
  hostKey: string
  /** Read when first needed (a file or the environment): the key never sits in the options of a reaper. */
  privateKey(): Promise<string | Buffer>
  /** `<hostStateDir>` as given, or undefined: the SSH user's `~/.cache/vm-pool`. */
  stateDir: string | undefined
  /** The `imageDir` option (a path on the VM host), or undefined: `<host's ~/.cache/vm-pool>/images`. */
  imageDir: string | undefined
}

/** The validated options plus the paths and timeouts derived from them (read from the environment when asked, not at import). */
export interface QemuConfig {
  readonly options: Readonly<z.output<typeof qemuProviderOptionsSchema>>
  /** `<stateDir>/qemu`: one dir per VM, and the accel probe's cache. */
  root(): string
  imageDir(): string
  snapshotDir(): string
  bootTimeoutMs(): number
  /** The `bootTimeoutMs` option set `bootTimeoutMs()`: VM_POOL_TIMEOUT_SCALE does not scale it (a timeout's hint then names the option). */
  bootTimeoutFromOption(): boolean
  /** Set when QEMU runs on a VM host (the `host` option). */
  readonly vmHost: VmHostConfig | undefined
}

export function resolveQemuConfig(raw: QemuProviderOptions): QemuConfig {
  const parsed = qemuProviderOptionsSchema.safeParse(raw)
  if (!parsed.success) throw invalidOptions(`invalid qemuProvider options: ${formatZodError(parsed.error, raw)}`, { provider: 'qemu' })
  const options = Object.freeze(parsed.data)
  const imageDir = () => getImageDir(options.imageDir)
  return Object.freeze({
    vmHost: options.host === undefined ? undefined : resolveVmHost(options),
    options,
    root: () => join(getStateDir(options.stateDir), 'qemu'),
    imageDir,
    snapshotDir: () => (options.snapshotDir ? resolve(options.snapshotDir) : join(imageDir(), '.snapshots')),
    bootTimeoutMs: () => options.bootTimeoutMs ?? scaleTimeout(BOOT_TIMEOUT_MS),
    bootTimeoutFromOption: () => options.bootTimeoutMs !== undefined,
  })
}

/**
 * What makes a VM of this provider different (`VmProvider.fingerprint`): the spec with these options applied,
 * as `QemuMachineResolver` applies them (its image's minimum memory is applied there, at boot, from the image).
 * The image folder counts: `minimal` in two folders are two images.
 */
export function getQemuFingerprint(config: QemuConfig, spec: { image?: string | undefined; cpus?: number | undefined; memoryMiB?: number | undefined; diskGiB?: number | undefined }): Record<string, unknown> {
  const image = spec.image ?? config.options.image
  // On a VM host the image folder is a path there (`~` its SSH user's home): the same on every runner.
  const imageDir = config.vmHost ? (config.vmHost.imageDir ?? REMOTE_DEFAULT_IMAGE_DIR) : config.imageDir()
  return {
    image: isAbsolute(image) ? image : join(imageDir, image),
    cpus: spec.cpus ?? config.options.cpus,
    memoryMiB: spec.memoryMiB ?? config.options.memoryMiB,
    accel: config.options.accel,
    snapshot: config.options.snapshot,
    qemuBinary: config.options.qemuBinary ?? 'qemu-system-x86_64',
    // A VM host's VMs are another machine's: never adopted by a pool of a local provider, nor of another host.
    ...(config.vmHost ? { vmHost: `${config.vmHost.user}@${config.vmHost.host}:${config.vmHost.port}` } : {}),
  }
}

/** The VM host part of the options, checked (the host key parses) and with the key source decided now. */
function resolveVmHost(options: z.output<typeof qemuProviderOptionsSchema>): VmHostConfig {
  const hostKey = options.hostKey!
  const hostKeyFingerprint = normalizeHostKeyPin(hostKey)
  const { privateKey: given, privateKeyFile } = options
  const fromEnv = process.env[VM_HOST_PRIVATE_KEY_ENV]
  if (given === undefined && privateKeyFile === undefined && !fromEnv) {
    throw invalidOptions(`invalid qemuProvider options: privateKey: a VM host needs a private key: privateKey, privateKeyFile, or the ${VM_HOST_PRIVATE_KEY_ENV} environment variable`, { provider: 'qemu', hint: 'from the CLI and for the reaper use privateKeyFile (a path) or the environment variable, so no key is written anywhere' })
  }
  let read: Promise<string | Buffer> | undefined
  const privateKey = (): Promise<string | Buffer> =>
    (read ??= given !== undefined
      ? Promise.resolve(given)
      : privateKeyFile !== undefined
        ? readFile(privateKeyFile).catch((error: unknown) => {
            read = undefined
            throw invalidOptions(`the VM host's private key file ${privateKeyFile} cannot be read: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, { provider: 'qemu' })
          })
        : Promise.resolve(fromEnv!))
  return Object.freeze({ host: options.host!, port: options.port ?? 22, user: options.user ?? userInfo().username, hostKey, hostKeyFingerprint, privateKey, stateDir: options.hostStateDir, imageDir: options.imageDir })
}
