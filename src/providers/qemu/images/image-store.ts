import { randomBytes } from 'node:crypto'
import { lstat, readdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import lockfile from 'proper-lockfile'
import { VmPoolError } from '../../../errors.js'
import { VM_NAME_PATTERN } from '../../../util/vm-name.js'
import { IMAGE_MANIFEST_FILE, imageManifestSchema } from '../qemu-image.js'
import { SNAPSHOT_MANIFEST_FILE } from '../qemu-snapshot.js'
import { IMAGE_BUILD_LOCK_WAIT_MS } from './image-build-slot.js'

export interface ImageSnapshotInfo {
  dir: string
  sizeBytes: number
  createdAt?: string
  /** When a VM was last restored from it (the state file's access time; relatime updates it at most daily). */
  lastUsedAt?: string
}

export interface ImageInfo {
  name: string
  dir: string
  /** `minimal`, `debian`, `cloud-image`, `custom` (a hand-written manifest) or `broken` (see `problem`). */
  kind: 'minimal' | 'debian' | 'cloud-image' | 'custom' | 'broken'
  /** Every file of the image, in allocated bytes (a sparse or qcow2 disk counts what it really uses). */
  sizeBytes: number
  createdAt?: string
  kernelVersion?: string
  username?: string
  /** Saved guests of this image (one per machine shape), under the snapshot dir. */
  snapshots: ImageSnapshotInfo[]
  problem?: string
}

/** The images in `imageDir` (a directory with a manifest.json; dot-dirs are scratch and snapshots), by name. */
export async function listImages(imageDir: string, options: { snapshotDir?: string } = {}): Promise<ImageInfo[]> {
  const snapshots = await listSnapshots(options.snapshotDir ?? join(imageDir, '.snapshots'))
  const images: ImageInfo[] = []
  for (const entry of (await readdir(imageDir, { withFileTypes: true }).catch(() => [])).sort((a, b) => a.name.localeCompare(b.name))) {
    if (!entry.isDirectory() || entry.name.startsWith('.')) continue
    const dir = join(imageDir, entry.name)
    const info: ImageInfo = { name: entry.name, dir, kind: 'broken', sizeBytes: await getAllocatedBytes(dir), snapshots: snapshots.get(resolve(dir)) ?? [] }
    try {
      const manifest = imageManifestSchema.parse(JSON.parse(await readFile(join(dir, IMAGE_MANIFEST_FILE), 'utf8')))
      // Minimal images built before manifests had a kind: a built kernel package and no disk.
      const kind = manifest.kind ?? (manifest.build.kernelPackage && !manifest.disk ? 'minimal' : 'custom')
      Object.assign(info, { kind, createdAt: manifest.createdAt, kernelVersion: manifest.build.kernelVersion, username: manifest.username })
    } catch (error) {
      info.problem = (error as NodeJS.ErrnoException).code === 'ENOENT' ? `no ${IMAGE_MANIFEST_FILE}` : `invalid ${IMAGE_MANIFEST_FILE}: ${(error as Error).message.split('\n')[0]}`
    }
    images.push(info)
  }
  return images
}

/** Names of the images in `imageDir`, for "unknown image" messages. */
export async function listImageNames(imageDir: string): Promise<string[]> {
  return (await listImages(imageDir)).filter((image) => image.kind !== 'broken').map((image) => image.name)
}

/**
 * Remove an image and its snapshots. Holds the image's build lock, so it never races a build of the
 * same name. `inUseBy` names running VMs booted from it: removing is refused unless `force`.
 */
export async function removeImage(imageDir: string, name: string, options: { inUseBy?: string[]; force?: boolean; snapshotDir?: string } = {}): Promise<{ dir: string; removedBytes: number; snapshots: number }> {
  if (!VM_NAME_PATTERN.test(name)) throw new VmPoolError({ code: 'VMPOOL_INVALID_OPTIONS', provider: 'qemu', operation: 'image rm', message: `invalid image name ${JSON.stringify(name)}: use ${VM_NAME_PATTERN.source}` })
  const dir = join(imageDir, name)
  const exists = await stat(dir).then((info) => info.isDirectory(), () => false)
  if (!exists) {
    const names = await listImageNames(imageDir)
    throw new VmPoolError({ code: 'VMPOOL_IMAGE_MISSING', provider: 'qemu', operation: 'image rm', message: `image ${JSON.stringify(name)} not found in ${imageDir}; ${names.length > 0 ? `images there: ${names.join(', ')}` : 'there are no images there'}` })
  }
  if (options.inUseBy && options.inUseBy.length > 0 && !options.force) {
    throw new VmPoolError({ code: 'VMPOOL_INVALID_OPTIONS', provider: 'qemu', operation: 'image rm', message: `image ${name} is in use by running VMs: ${options.inUseBy.join(', ')}`, hint: 'delete them first (vm-pool rm NAME...), or --force' })
  }
  const release = await lockfile.lock(imageDir, {
    lockfilePath: join(imageDir, `${name}.build.lock`),
    stale: 30_000,
    retries: { retries: Math.ceil(IMAGE_BUILD_LOCK_WAIT_MS / 1_000), minTimeout: 1_000, maxTimeout: 1_000, factor: 1 },
  })
  try {
    const snapshots = (await listSnapshots(options.snapshotDir ?? join(imageDir, '.snapshots'))).get(resolve(dir)) ?? []
    const removedBytes = (await getAllocatedBytes(dir)) + snapshots.reduce((sum, snapshot) => sum + snapshot.sizeBytes, 0)
    // Out of sight first (a reader sees the image or nothing), then gone.
    const doomed = join(imageDir, `.old-${name}-${process.pid}-${randomBytes(4).toString('hex')}`)
    await rename(dir, doomed)
    await rm(doomed, { recursive: true, force: true })
    for (const snapshot of snapshots) await rm(snapshot.dir, { recursive: true, force: true })
    return { dir, removedBytes, snapshots: snapshots.length }
  } finally {
    await release()
  }
}

/** Snapshot slots by the image dir their `snapshot.json` says they were saved from. */
async function listSnapshots(snapshotDir: string): Promise<Map<string, ImageSnapshotInfo[]>> {
  const byImage = new Map<string, ImageSnapshotInfo[]>()
  for (const entry of await readdir(snapshotDir, { withFileTypes: true }).catch(() => [])) {
    if (!entry.isDirectory()) continue
    const dir = join(snapshotDir, entry.name)
    let manifest: { facts?: { imageDir?: unknown }; createdAt?: string; stateFile?: string }
    try {
      manifest = JSON.parse(await readFile(join(dir, SNAPSHOT_MANIFEST_FILE), 'utf8')) as typeof manifest
    } catch {
      continue // being built, or broken: the provider rebuilds it
    }
    if (typeof manifest.facts?.imageDir !== 'string') continue
    const info: ImageSnapshotInfo = { dir, sizeBytes: await getAllocatedBytes(dir), createdAt: manifest.createdAt }
    if (manifest.stateFile) {
      const state = await stat(join(dir, manifest.stateFile)).catch(() => undefined)
      if (state) info.lastUsedAt = new Date(Math.max(state.atimeMs, state.mtimeMs)).toISOString()
    }
    const key = resolve(manifest.facts.imageDir)
    byImage.set(key, [...(byImage.get(key) ?? []), info])
  }
  return byImage
}

/** Allocated bytes of a file or a directory tree (symlinks not followed). */
export async function getAllocatedBytes(path: string): Promise<number> {
  const info = await lstat(path).catch(() => undefined)
  if (!info) return 0
  if (!info.isDirectory()) return info.blocks * 512
  let total = info.blocks * 512
  for (const entry of await readdir(path).catch(() => [])) total += await getAllocatedBytes(join(path, entry))
  return total
}
