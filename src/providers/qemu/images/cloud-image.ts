import { copyFile, open, stat, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { VmPoolError, invalidOptions } from '../../../errors.js'
import { runProcess } from '../../../transport/process-runner.js'
import { generateSshKeyPair } from '../../../transport/ssh-keys.js'
import { writeFileAtomic } from '../../../util/fs-atomic.js'
import { scaleTimeout } from '../../../util/timeouts.js'
import { VM_NAME_PATTERN } from '../../../util/vm-name.js'
import { IMAGE_MANIFEST_FILE, type ImageManifest } from '../qemu-image.js'
import { CLOUD_INIT_BOOT_MARKER, CLOUD_SSH_MAX_SESSIONS, makeCloudInitSeed } from './cloud-init-seed.js'
import { findOnPath } from './host-tools.js'
import { buildInImageSlot, readCachedManifest, type BuildImageResult } from './image-build-slot.js'

/** Bump when what an import writes beside the disk (seed, manifest) changes. */
export const CLOUD_IMAGE_RECIPE_VERSION = 2
/** The non-root user cloud-init creates unless `user` says otherwise. */
export const DEFAULT_CLOUD_USER = 'debian'
/** Cloud images put the root file system on the disk's first partition. */
export const DEFAULT_CLOUD_APPEND = 'root=/dev/vda1 rw console=ttyS0 panic=-1'
/** cloud-init (Python) on a cloud image's first boot needs more than the provider's default 256 MiB. */
const CLOUD_MIN_MEMORY_MIB = 512
const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb])

export interface ImportImageOptions {
  imageDir: string
  /** The new image's name (its directory under `imageDir`). */
  name: string
  /** A qcow2 cloud image (Ubuntu's `*-server-cloudimg-amd64.img`, Debian's `*-genericcloud-amd64.qcow2`); copied. */
  disk: string
  /** Boot this kernel directly instead of the disk's bootloader (faster under TCG). */
  kernel?: string
  initrd?: string
  /** Kernel command line with `kernel`. @default DEFAULT_CLOUD_APPEND */
  append?: string
  /** @default DEFAULT_CLOUD_USER */
  user?: string
  /** Replace an existing image of that name. */
  force?: boolean
  log?: (line: string) => void
}

/**
 * `vm-pool image import NAME --disk FILE.qcow2`: copy a cloud image into `<imageDir>/NAME/` and give
 * it what the provider needs to boot and reach it: a fresh client key pair, a guest host key the host
 * pins, and a NoCloud seed that makes cloud-init install both at first boot (docs/qemu.md).
 */
export async function importImage(options: ImportImageOptions): Promise<BuildImageResult> {
  const log = options.log ?? (() => {})
  if (!VM_NAME_PATTERN.test(options.name)) throw invalidOptions(`invalid image name ${JSON.stringify(options.name)}: use ${VM_NAME_PATTERN.source}`, { provider: 'qemu', operation: 'image import' })
  if (options.initrd && !options.kernel) throw invalidOptions('--initrd needs --kernel (an initrd is only used with direct kernel boot)', { provider: 'qemu', operation: 'image import' })
  const disk = resolve(options.disk)
  const info = await inspectDisk(disk)
  for (const file of [options.kernel, options.initrd]) {
    if (file) await stat(file).catch((error: unknown) => { throw invalidOptions(`${file} does not exist`, { provider: 'qemu', operation: 'image import', cause: error }) })
  }
  if (!options.force && (await readCachedManifest(join(options.imageDir, options.name)))) {
    throw new VmPoolError({ code: 'VMPOOL_INVALID_OPTIONS', provider: 'qemu', operation: 'image import', message: `image ${options.name} already exists in ${options.imageDir}`, hint: '--force replaces it; `vm-pool image rm NAME` removes it' })
  }
  return buildInImageSlot({
    imageDir: options.imageDir,
    name: options.name,
    force: true,
    log,
    minFreeBytes: info.fileBytes + 50_000_000,
    isUpToDate: () => false,
    build: async (work) => {
      const image = join(work, 'image')
      log(`copying ${disk} (${(info.fileBytes / 1e6).toFixed(0)} MB)`)
      await copyFile(disk, join(image, 'disk.qcow2'))
      if (options.kernel) await copyFile(options.kernel, join(image, 'vmlinuz'))
      if (options.initrd) await copyFile(options.initrd, join(image, 'initrd.img'))
      return finishCloudImage(image, {
        name: options.name,
        kernel: options.kernel ? 'vmlinuz' : undefined,
        initrd: options.initrd ? 'initrd.img' : undefined,
        append: options.append ?? DEFAULT_CLOUD_APPEND,
        user: options.user ?? DEFAULT_CLOUD_USER,
        diskVirtualBytes: info.virtualBytes,
        build: { importedFrom: disk },
      })
    },
  })
}

export interface FinishCloudImageOptions {
  name: string
  kernel?: string
  initrd?: string
  append: string
  user: string
  diskVirtualBytes: number
  build: Record<string, string>
}

/** Keys, seed and manifest beside `dir/disk.qcow2` (and the kernel files, when given). */
export async function finishCloudImage(dir: string, options: FinishCloudImageOptions): Promise<ImageManifest> {
  const client = generateSshKeyPair(`vm-pool-${options.name}`)
  const hostKey = generateSshKeyPair('vm-pool-guest')
  await writeFileAtomic(join(dir, 'client_key'), client.privateKey, 0o600)
  await writeFile(join(dir, 'client_key.pub'), `${client.publicKey}\n`)
  // The seed carries the guest's host private key: private to this user, like the client key.
  await writeFileAtomic(join(dir, 'seed.iso'), makeCloudInitSeed({ user: options.user, clientPublicKey: client.publicKey, hostKey, hostname: 'vm-pool' }), 0o600)
  const manifest: ImageManifest = {
    recipeVersion: CLOUD_IMAGE_RECIPE_VERSION,
    name: options.name,
    kind: 'cloud-image',
    ...(options.kernel ? { kernel: options.kernel, append: options.append } : { append: options.append }),
    ...(options.initrd ? { initrd: options.initrd } : {}),
    disk: 'disk.qcow2',
    diskFormat: 'qcow2',
    diskVirtualBytes: options.diskVirtualBytes,
    growsRootFs: true,
    seed: 'seed.iso',
    hostKey: hostKey.publicKey.split(/\s+/).slice(0, 2).join(' '),
    clientKey: 'client_key',
    username: 'root',
    sudoUser: options.user,
    sshMaxSessions: CLOUD_SSH_MAX_SESSIONS,
    bootMarker: CLOUD_INIT_BOOT_MARKER,
    minMemoryMiB: CLOUD_MIN_MEMORY_MIB,
    build: options.build,
    createdAt: new Date().toISOString(),
  }
  await writeFileAtomic(join(dir, IMAGE_MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`, 0o644)
  return manifest
}

/** A readable qcow2 without a backing file (a copy of one would lose it); its virtual size. */
async function inspectDisk(disk: string): Promise<{ fileBytes: number; virtualBytes: number }> {
  const where = { provider: 'qemu', operation: 'image import' }
  let fileBytes: number
  const magic = Buffer.alloc(4)
  try {
    const handle = await open(disk, 'r')
    try {
      fileBytes = (await handle.stat()).size
      await handle.read(magic, 0, 4, 0)
    } finally {
      await handle.close()
    }
  } catch (error) {
    throw invalidOptions(`--disk ${disk}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message}`, { ...where, cause: error })
  }
  if (!magic.equals(QCOW2_MAGIC)) {
    throw invalidOptions(`--disk ${disk} is not a qcow2 image (it does not start with "QFI\\xfb")`, { ...where, hint: `convert it first: qemu-img convert -O qcow2 ${disk} ${disk}.qcow2` })
  }
  const qemuImg = await findOnPath('qemu-img')
  if (!qemuImg) throw new VmPoolError({ code: 'VMPOOL_IMAGE_BUILD_FAILED', ...where, message: 'qemu-img is not on PATH', hint: 'sudo apt-get install qemu-utils' })
  const result = await runProcess(qemuImg, ['info', '--output=json', disk], { timeoutMs: scaleTimeout(60_000), env: process.env })
  if (result.exitCode !== 0) throw invalidOptions(`--disk ${disk}: qemu-img info failed: ${result.stderr.trim()}`, where)
  const parsed = JSON.parse(result.stdout) as { 'virtual-size': number; 'backing-filename'?: string; format: string }
  if (parsed['backing-filename']) {
    throw invalidOptions(`--disk ${disk} is an overlay on ${parsed['backing-filename']}; import a standalone image`, { ...where, hint: `flatten it: qemu-img convert -O qcow2 ${disk} flat.qcow2` })
  }
  return { fileBytes, virtualBytes: parsed['virtual-size'] }
}
