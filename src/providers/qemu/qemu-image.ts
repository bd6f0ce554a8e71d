import { readdir, readFile, stat } from 'node:fs/promises'
import { isAbsolute, join, resolve } from 'node:path'
import { z } from 'zod'
import { formatZodError } from '../../config/zod-error.js'
import { VmPoolError } from '../../errors.js'
import { getStateDir } from '../../util/state-dir.js'
import { VM_NAME_PATTERN } from '../../util/vm-name.js'

/** The image `vm-pool image build` makes and the provider boots when no `image` is given. */
export const DEFAULT_IMAGE_NAME = 'minimal'
export const IMAGE_MANIFEST_FILE = 'manifest.json'

/**
 * `<image dir>/manifest.json`: what the provider needs to boot an image and reach it. Paths are
 * relative to the image directory (or absolute). Hand-written manifests are how users bring their
 * own kernel + initrd or a cloud image (docs/qemu.md).
 */
export const imageManifestSchema = z
  .object({
    /** Bumped when `vm-pool image build` changes what it produces; hand-written manifests use 1. */
    recipeVersion: z.number().int().positive(),
    name: z.string().min(1),
    /** Direct kernel boot: the kernel image (bzImage). */
    kernel: z.string().min(1).optional(),
    initrd: z.string().min(1).optional(),
    /** Kernel command line (direct kernel boot only). */
    append: z.string().default('console=ttyS0 panic=-1'),
    /**
     * A disk image: the root file system of a kernel-booted image (`root=/dev/vda` in `append`), or a
     * cloud image booted by the firmware when there is no kernel. Never written to: each VM writes to
     * its own overlay (today QEMU's throwaway `snapshot=on`).
     */
    disk: z.string().min(1).optional(),
    diskFormat: z.enum(['qcow2', 'raw']).default('qcow2'),
    /** The disk's virtual size in bytes: a per-VM overlay is at least this big (`diskGiB` may ask for more). */
    diskVirtualBytes: z.number().int().positive().optional(),
    /** The guest grows its root file system to fill its disk at boot: an overlay bigger than the disk is usable space. */
    growsRootFs: z.boolean().optional(),
    /**
     * What the image is: `minimal` (initramfs guest), `debian` (built from Debian packages, with a disk),
     * `cloud-image` (a disk whose first boot goes through cloud-init's NoCloud seed). Absent: hand-written.
     */
    kind: z.enum(['minimal', 'debian', 'cloud-image']).optional(),
    /** A cloud-init NoCloud seed (ISO with label `cidata`), attached read-only. */
    seed: z.string().min(1).optional(),
    /** The guest's SSH host key as an OpenSSH public key line or `SHA256:` fingerprint: the host pins it. */
    hostKey: z.string().min(1),
    /** Private key (file) the guest's `username` trusts. */
    clientKey: z.string().min(1),
    username: z.string().min(1).default('root'),
    /** A non-root user with passwordless sudo that also trusts `clientKey`. */
    sudoUser: z.string().min(1).optional(),
    /** Concurrent sessions (exec channels) the guest's SSH server allows on one connection. @default 1 (dropbear: see docs/qemu.md) */
    sshMaxSessions: z.number().int().positive().optional(),
    /** A line the guest prints on its serial console once its network is up: SSH attempts wait for it. */
    bootMarker: z.string().min(1).optional(),
    /** The smallest memory the image boots with. @default 128 */
    minMemoryMiB: z.number().int().positive().default(128),
    /** Facts for humans and for the up-to-date check of `image build`. */
    build: z.record(z.string(), z.string()).default({}),
    createdAt: z.string().optional(),
  })
  .strict()
  .refine((manifest) => manifest.kernel !== undefined || manifest.disk !== undefined, { message: 'an image needs a kernel (direct boot) or a disk' })

export type ImageManifest = z.output<typeof imageManifestSchema>

/** A manifest with every path made absolute. */
export interface ResolvedImage extends ImageManifest {
  dir: string
}

/**
 * Where images live: the `imageDir` option, else `VM_POOL_IMAGE_DIR`, else `<state dir>/images`,
 * where the state dir comes from `VM_POOL_STATE_DIR` or `~/.cache/vm-pool` — deliberately NOT from a
 * provider's `stateDir` option, so tests with throwaway state dirs still share the built image.
 */
export function getImageDir(imageDir?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (imageDir) return resolve(imageDir)
  if (env.VM_POOL_IMAGE_DIR) return resolve(env.VM_POOL_IMAGE_DIR)
  return join(getStateDir(undefined, env), 'images')
}

/** `image` is a name under the image dir, or an absolute path to an image directory. */
export function getImagePath(image: string, imageDir: string): string {
  if (isAbsolute(image)) return image
  if (!VM_NAME_PATTERN.test(image)) {
    throw new VmPoolError({ code: 'VMPOOL_INVALID_OPTIONS', provider: 'qemu', message: `invalid image ${JSON.stringify(image)}: use a name (${VM_NAME_PATTERN.source}) or an absolute path to an image directory` })
  }
  return join(imageDir, image)
}

export async function loadImage(image: string, imageDir: string): Promise<ResolvedImage> {
  const dir = getImagePath(image, imageDir)
  const manifestPath = join(dir, IMAGE_MANIFEST_FILE)
  let text: string
  try {
    text = await readFile(manifestPath, 'utf8')
  } catch (error) {
    throw new VmPoolError({
      code: 'VMPOOL_IMAGE_MISSING',
      provider: 'qemu',
      operation: 'create',
      message: `image ${JSON.stringify(image)} not found: ${manifestPath} does not exist${isAbsolute(image) ? '' : `; ${await describeImagesIn(imageDir)}`}`,
      hint: image === DEFAULT_IMAGE_NAME ? 'build it once with `npx vm-pool image build` (set VM_POOL_IMAGE_DIR to share one image dir)' : 'build one (`vm-pool image build debian-12`), import one (`vm-pool image import NAME --disk FILE.qcow2`), or see docs/qemu.md for the image manifest format',
      cause: error,
    })
  }
  let parsed: ImageManifest
  try {
    const result = imageManifestSchema.safeParse(JSON.parse(text))
    if (!result.success) throw new Error(formatZodError(result.error))
    parsed = result.data
  } catch (error) {
    throw new VmPoolError({
      code: 'VMPOOL_IMAGE_MISSING',
      provider: 'qemu',
      operation: 'create',
      message: `image ${JSON.stringify(image)} has an invalid manifest ${manifestPath}: ${(error as Error).message}`,
      hint: image === DEFAULT_IMAGE_NAME ? 'rebuild it with `npx vm-pool image build --force`' : 'see docs/qemu.md for the image manifest format',
      cause: error,
    })
  }
  const abs = (path: string | undefined) => (path === undefined ? undefined : resolve(dir, path))
  const resolved: ResolvedImage = { ...parsed, dir, kernel: abs(parsed.kernel), initrd: abs(parsed.initrd), disk: abs(parsed.disk), seed: abs(parsed.seed), clientKey: abs(parsed.clientKey)! }
  for (const path of [resolved.kernel, resolved.initrd, resolved.disk, resolved.seed, resolved.clientKey]) {
    if (path === undefined) continue
    try {
      await stat(path)
    } catch (error) {
      throw new VmPoolError({ code: 'VMPOOL_IMAGE_MISSING', provider: 'qemu', operation: 'create', message: `image ${JSON.stringify(image)} is incomplete: ${path} is missing`, hint: 'rebuild it with `npx vm-pool image build --force`', cause: error })
    }
  }
  return resolved
}

/** "images in DIR: a, b" (directories with a manifest), for messages about an image that is not there. */
async function describeImagesIn(imageDir: string): Promise<string> {
  const names: string[] = []
  for (const entry of await readdir(imageDir, { withFileTypes: true }).catch(() => [])) {
    if (!entry.isDirectory() || entry.name.startsWith('.')) continue
    if (await stat(join(imageDir, entry.name, IMAGE_MANIFEST_FILE)).then(() => true, () => false)) names.push(entry.name)
  }
  return names.length > 0 ? `images in ${imageDir}: ${names.sort().join(', ')}` : `there are no images in ${imageDir}`
}
