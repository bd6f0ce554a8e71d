import { randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import { access, chown, mkdir, readdir, readFile, rename, rm, statfs } from 'node:fs/promises'
import { join } from 'node:path'
import lockfile from 'proper-lockfile'
import type { Dispatcher } from 'undici'
import { VmPoolError, isVmPoolError } from '../../../errors.js'
import { isPidAlive } from '../../../util/process-info.js'
import { IMAGE_MANIFEST_FILE, imageManifestSchema, type ImageManifest } from '../qemu-image.js'

/** How long a build waits for another process building the same image. */
export const IMAGE_BUILD_LOCK_WAIT_MS = 600_000

/** What every recipe's build takes. */
export interface BuildImageOptions {
  imageDir: string
  /** Rebuild even when the cached image is up to date. */
  force?: boolean
  /** Progress lines (the CLI prints them on stderr). */
  log?: (line: string) => void
  signal?: AbortSignal
  /**
   * Where the minimal image's Debian packages come from: this host's apt, or Debian's archive over
   * HTTPS (hosts whose apt is not Debian's, or without apt). @default 'auto'
   */
  source?: 'auto' | 'apt' | 'debian-archive'
  /** Debian mirror. @default `VM_POOL_DEBIAN_MIRROR`, else https://deb.debian.org/debian */
  mirror?: string
  /** undici Dispatcher for requests to Debian's archive. @default undici's global dispatcher */
  dispatcher?: Dispatcher
}

export interface BuildImageResult {
  dir: string
  /** True when the cached image was up to date and nothing was built. */
  reused: boolean
  manifest: ImageManifest
  durationMs: number
}

export interface ImageSlotOptions {
  imageDir: string
  /** The image's name: its directory under `imageDir`. */
  name: string
  force?: boolean
  log: (line: string) => void
  /** True when a cached manifest was made by this recipe from these inputs. */
  isUpToDate(cached: ImageManifest): boolean
  /** A lower bound of the free space the build needs in `imageDir`: less is refused before starting. */
  minFreeBytes: number
  /** Build into `work/image` (created empty) and return its manifest; `work` is scratch space, removed after. */
  build(work: string): Promise<ImageManifest>
}

/**
 * The life cycle every image shares: one builder per name at a time (a lock file), reuse when the
 * cached image is up to date, build in a scratch dir beside the image, then swap the finished image
 * in with a rename. A reader sees the old image or the new one; a build that fails (a failing
 * `--script`, a full disk, Ctrl-C) leaves the old image — or none — never a half-built one, because
 * only a finished build has its manifest in `<imageDir>/<name>/`.
 */
export async function buildInImageSlot(options: ImageSlotOptions): Promise<BuildImageResult> {
  const started = performance.now()
  const { imageDir, name, log } = options
  const dir = join(imageDir, name)
  await mkdir(imageDir, { recursive: true, mode: 0o700 })
  const release = await lockfile.lock(imageDir, {
    lockfilePath: join(imageDir, `${name}.build.lock`),
    stale: 30_000,
    retries: { retries: Math.ceil(IMAGE_BUILD_LOCK_WAIT_MS / 1_000), minTimeout: 1_000, maxTimeout: 1_000, factor: 1 },
  })
  try {
    if (!options.force) {
      const cached = await readCachedManifest(dir)
      if (cached && options.isUpToDate(cached)) {
        log(`image ${name} is up to date in ${dir} (built ${cached.createdAt ?? 'earlier'}; --force rebuilds)`)
        return { dir, reused: true, manifest: cached, durationMs: Math.round(performance.now() - started) }
      }
      if (cached) log(`image ${name} in ${dir} is outdated: rebuilding`)
    }
    await removeAbandonedBuilds(imageDir, name)
    await checkFreeSpace(imageDir, name, options.minFreeBytes)
    const work = join(imageDir, `.build-${name}-${process.pid}-${randomBytes(4).toString('hex')}`)
    try {
      await mkdir(join(work, 'image'), { recursive: true, mode: 0o700 })
      const manifest = await options.build(work).catch(async (error: unknown) => {
        throw await explainNoSpace(error, imageDir, name, options.minFreeBytes)
      })
      await handBackToSudoUser(join(work, 'image'))
      const old = join(imageDir, `.old-${name}-${process.pid}-${randomBytes(4).toString('hex')}`)
      await rename(dir, old).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'ENOENT') throw error
      })
      await rename(join(work, 'image'), dir)
      await rm(old, { recursive: true, force: true })
      log(`image ${name} built in ${dir} (${Math.round((performance.now() - started) / 100) / 10} s)`)
      return { dir, reused: false, manifest, durationMs: Math.round(performance.now() - started) }
    } finally {
      await rm(work, { recursive: true, force: true })
    }
  } finally {
    await release()
  }
}

/** The manifest of a complete image in `dir` (every file it names readable), else undefined. */
export async function readCachedManifest(dir: string): Promise<ImageManifest | undefined> {
  try {
    const manifest = imageManifestSchema.parse(JSON.parse(await readFile(join(dir, IMAGE_MANIFEST_FILE), 'utf8')))
    for (const file of [manifest.kernel, manifest.initrd, manifest.disk, manifest.seed, manifest.clientKey]) {
      if (file) await access(join(dir, file), constants.R_OK)
    }
    return manifest
  } catch {
    return undefined
  }
}

/** Scratch dirs of builds of this name whose process died (SIGKILL, power loss): a Debian one is ~2 GB. */
async function removeAbandonedBuilds(imageDir: string, name: string): Promise<void> {
  for (const entry of await readdir(imageDir).catch(() => [])) {
    const match = new RegExp(`^\\.(?:build|old)-${name}-(\\d+)-[0-9a-f]{8}$`).exec(entry)
    if (match && !isPidAlive(Number(match[1]))) await rm(join(imageDir, entry), { recursive: true, force: true })
  }
}

async function checkFreeSpace(imageDir: string, name: string, minFreeBytes: number): Promise<void> {
  const free = await getFreeBytes(imageDir)
  if (free === undefined || free >= minFreeBytes) return
  throw noSpaceError(imageDir, name, minFreeBytes, free)
}

async function getFreeBytes(dir: string): Promise<number | undefined> {
  try {
    const stats = await statfs(dir)
    return stats.bavail * stats.bsize
  } catch {
    return undefined
  }
}

/** ENOSPC from Node, or "No space left on device" from a tool, becomes one clear error. */
async function explainNoSpace(error: unknown, imageDir: string, name: string, minFreeBytes: number): Promise<unknown> {
  const text = `${(error as NodeJS.ErrnoException)?.code ?? ''} ${(error as Error)?.message ?? ''} ${isVmPoolError(error) ? JSON.stringify(error.details ?? {}) : ''}`
  if (!/ENOSPC|No space left on device|Disk quota exceeded/i.test(text)) return error
  return noSpaceError(imageDir, name, minFreeBytes, await getFreeBytes(imageDir), error)
}

function noSpaceError(imageDir: string, name: string, minFreeBytes: number, free: number | undefined, cause?: unknown): VmPoolError {
  const gb = (bytes: number) => `${(bytes / 1e9).toFixed(1)} GB`
  return new VmPoolError({
    code: 'VMPOOL_IMAGE_BUILD_FAILED',
    provider: 'qemu',
    operation: 'image build',
    message: `no space left on the device of ${imageDir} to build image ${name}: it needs at least ${gb(minFreeBytes)} free${free === undefined ? '' : `, ${gb(free)} ${cause ? 'is free now' : 'is free'}`}; nothing was kept from this build`,
    hint: 'free some space there, or build into another file system with --image-dir DIR (or VM_POOL_IMAGE_DIR)',
    details: { imageDir, minFreeBytes, ...(free === undefined ? {} : { freeBytes: free }) },
    cause,
  })
}

/**
 * `sudo vm-pool image build` (root is needed for the Debian recipe) would leave root-owned files in the
 * user's cache: hand them to the user sudo ran for, so their tests can read the image without root.
 */
async function handBackToSudoUser(dir: string): Promise<void> {
  const uid = Number(process.env.SUDO_UID)
  const gid = Number(process.env.SUDO_GID)
  if (process.getuid?.() !== 0 || !Number.isInteger(uid) || !Number.isInteger(gid) || uid === 0) return
  await chown(dir, uid, gid)
  for (const entry of await readdir(dir, { recursive: true })) await chown(join(dir, entry), uid, gid)
}
