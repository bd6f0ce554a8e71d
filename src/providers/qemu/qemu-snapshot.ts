import { createHash, randomBytes } from 'node:crypto'
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import lockfile from 'proper-lockfile'
import { z } from 'zod'
import { VmPoolError, VmPoolTimeoutError } from '../../errors.js'
import { runProcess } from '../../transport/process-runner.js'
import { quoteShellArg } from '../../transport/shell.js'
import { createDebug } from '../../util/debug.js'
import { writeFileAtomic } from '../../util/fs-atomic.js'
import { isProcessAlive, type ProcessIdentity } from '../../util/process-info.js'
import { scaleTimeout, sleep } from '../../util/timeouts.js'
import { buildMachineArgs, type QemuMachine } from './qemu-command.js'
import { IMAGE_MANIFEST_FILE } from './qemu-image.js'
import { snapshotSlotName } from './snapshot-slot-name.js'
import type { JsonValue } from '../vm-provider.js'
import { runQmpCommand, type QmpTarget } from './qmp-client.js'

/**
 * Bump when what a snapshot contains changes (the machine options, how the template is prepared):
 * snapshots of another format no longer match their key and are rebuilt.
 */
export const SNAPSHOT_FORMAT_VERSION = 1
export const SNAPSHOT_MANIFEST_FILE = 'snapshot.json'
/** How long QEMU may take to write the stopped guest's memory and devices to the state file (91 MB for 256 MiB: under a second here). */
export const SNAPSHOT_SAVE_TIMEOUT_MS = 120_000
/**
 * How long a create waits for another process that builds the same snapshot (a cold boot plus the
 * save) before it gives up. proper-lockfile takes over a lock whose holder stopped refreshing it.
 */
export const SNAPSHOT_LOCK_WAIT_MS = 300_000
/** A lock not refreshed for this long belongs to a dead builder and is taken over. */
const SNAPSHOT_LOCK_STALE_MS = 30_000
/** Pause between QMP status polls while a restored guest loads (QMP answers in ~1 ms). */
const STATUS_POLL_INTERVAL_MS = 20

const debug = createDebug('vm-pool:qemu')

/** `<slot dir>/snapshot.json`: written last, so a snapshot with a manifest is complete. */
export const snapshotManifestSchema = z
  .object({
    formatVersion: z.number().int(),
    /** Random per build: a restore that failed invalidates exactly the snapshot it used, not a newer one. */
    id: z.string().regex(/^[0-9a-f]{16}$/),
    /** sha256 of `facts`: what must be equal for a saved guest to load into a new QEMU. */
    key: z.string().regex(/^[0-9a-f]{64}$/),
    facts: z.record(z.string(), z.json()),
    /** The state file, relative to the slot dir (`state-<id>`). */
    stateFile: z.string().regex(/^state-[0-9a-f]{16}$/),
    stateBytes: z.number().int().positive(),
    createdAt: z.string(),
    /** The template's cold boot and the save, for `vm-pool doctor` and the bench. */
    bootMs: z.number().int().nonnegative(),
    saveMs: z.number().int().nonnegative(),
    /** Disk images: the template's overlay as it was at the save (`disk-<id>.qcow2`, read-only), under each restored VM's overlay. */
    diskFile: z.string().regex(/^disk-[0-9a-f]{16}\.qcow2$/).optional(),
  })
  .strict()

export type SnapshotManifest = z.output<typeof snapshotManifestSchema>

/** Where a machine shape's snapshot lives and the key it must carry. */
export interface SnapshotSlot {
  dir: string
  key: string
  facts: Record<string, JsonValue>
}

export type SnapshotState =
  | { status: 'ready'; manifest: SnapshotManifest; stateFile: string }
  | { status: 'missing' }
  | { status: 'stale'; reason: string }

/** `qemu-system-x86_64 --version`, first line: a QEMU upgrade may change the migration format. Cached per binary. */
const versionCache = new Map<string, Promise<string>>()
export function getQemuVersion(binary: string): Promise<string> {
  let cached = versionCache.get(binary)
  if (!cached) {
    cached = runProcess(binary, ['--version'], { timeoutMs: scaleTimeout(10_000), env: process.env, provider: 'qemu' }).then((result) => {
      if (result.exitCode !== 0) throw new VmPoolError({ code: 'VMPOOL_PROVIDER_UNAVAILABLE', provider: 'qemu', operation: 'create', message: `${binary} --version exited with ${result.exitCode}: ${result.stderr.trim()}` })
      return result.stdout.split('\n')[0]!.trim()
    })
    cached.catch(() => versionCache.delete(binary))
    versionCache.set(binary, cached)
  }
  return cached
}

/** A changed kernel, initrd or manifest (a rebuilt image) changes the key. Size + mtime: no need to hash 11 MB per create. */
async function describeFile(path: string | undefined): Promise<string | null> {
  if (path === undefined) return null
  const info = await stat(path)
  return `${info.size}:${Math.round(info.mtimeMs)}`
}

/**
 * The slot for a machine: one directory per image + accelerator + vCPUs + memory (so differently
 * shaped VMs keep their own snapshots side by side), and a key over everything that makes a saved
 * guest incompatible: the exact machine arguments (kernel, command line, memory, CPUs, accelerator,
 * devices), the image files, the QEMU binary and version, and SNAPSHOT_FORMAT_VERSION.
 */
export async function getSnapshotSlot(options: { snapshotDir: string; machine: QemuMachine; qemuBinary: string }): Promise<SnapshotSlot> {
  const { machine } = options
  const { image } = machine
  const facts: Record<string, JsonValue> = {
    formatVersion: SNAPSHOT_FORMAT_VERSION,
    qemuBinary: options.qemuBinary,
    qemuVersion: await getQemuVersion(options.qemuBinary),
    imageDir: image.dir,
    imageManifest: createHash('sha256').update(await readFile(join(image.dir, IMAGE_MANIFEST_FILE))).digest('hex'),
    kernel: await describeFile(image.kernel),
    initrd: await describeFile(image.initrd),
    machineArgs: buildMachineArgs(machine, image.disk ? '<per-VM overlay>' : undefined),
  }
  // Disk images only (initramfs snapshot keys stay as they were); machineArgs holds a placeholder for each VM's own overlay.
  if (image.disk) Object.assign(facts, { disk: await describeFile(image.disk), diskBytes: machine.diskBytes ?? null })
  const key = createHash('sha256').update(JSON.stringify(facts)).digest('hex')
  return { dir: join(options.snapshotDir, snapshotSlotName(machine, options.qemuBinary)), key, facts }
}

/** Is there a usable snapshot in the slot? A manifest with another key, or a state file of the wrong size, is stale. */
export async function readSnapshot(slot: SnapshotSlot): Promise<SnapshotState> {
  let text: string
  try {
    text = await readFile(join(slot.dir, SNAPSHOT_MANIFEST_FILE), 'utf8')
  } catch {
    return { status: 'missing' }
  }
  let manifest: SnapshotManifest
  try {
    manifest = snapshotManifestSchema.parse(JSON.parse(text))
  } catch (error) {
    return { status: 'stale', reason: `unreadable ${SNAPSHOT_MANIFEST_FILE} (${(error as Error).message.split('\n')[0]})` }
  }
  if (manifest.key !== slot.key) {
    const changed = Object.keys(slot.facts).filter((fact) => JSON.stringify(slot.facts[fact]) !== JSON.stringify(manifest.facts[fact]))
    return { status: 'stale', reason: `made for another machine or image (changed: ${changed.join(', ') || 'the key'})` }
  }
  const stateFile = join(slot.dir, manifest.stateFile)
  try {
    const { size } = await stat(stateFile)
    if (size !== manifest.stateBytes) return { status: 'stale', reason: `${manifest.stateFile} has ${size} bytes, the manifest says ${manifest.stateBytes}` }
  } catch {
    return { status: 'stale', reason: `${manifest.stateFile} is missing` }
  }
  if (manifest.diskFile !== undefined && !(await stat(join(slot.dir, manifest.diskFile)).then(() => true, () => false))) {
    return { status: 'stale', reason: `${manifest.diskFile} is missing` }
  }
  return { status: 'ready', manifest, stateFile }
}

/** Boot a template, save it to `stateFile`, shut it down; a disk image's template overlay goes to `diskFile` (`disk: true`). */
export type SnapshotBuilder = (options: { stateFile: string; workDir: string; diskFile: string }) => Promise<{ bootMs: number; saveMs: number; disk?: boolean }>

/** Builds in flight in this process, by slot dir: concurrent creates here share one build instead of queueing on the file lock. */
const inFlight = new Map<string, Promise<SnapshotManifest>>()

/**
 * The slot's snapshot, built first if there is none or it is stale. Builders in other processes are
 * kept out by a lock file: whoever gets the lock first builds, the others wait for it and then find the
 * winner's snapshot (read again under the lock). A stale snapshot is deleted before the rebuild.
 */
export function ensureSnapshot(slot: SnapshotSlot, build: SnapshotBuilder): Promise<SnapshotManifest> {
  const running = inFlight.get(slot.dir)
  if (running) return running
  const job = ensureSnapshotOnce(slot, build).finally(() => inFlight.delete(slot.dir))
  inFlight.set(slot.dir, job)
  return job
}

async function ensureSnapshotOnce(slot: SnapshotSlot, build: SnapshotBuilder): Promise<SnapshotManifest> {
  const fast = await readSnapshot(slot)
  if (fast.status === 'ready') return fast.manifest
  return withSlotLock(slot, async () => {
    const current = await readSnapshot(slot)
    if (current.status === 'ready') return current.manifest
    if (current.status === 'stale') debug('snapshot in %s is stale (%s): rebuilding it', slot.dir, current.reason)
    await removeSnapshotFiles(slot.dir)
    const id = randomBytes(8).toString('hex')
    const stateName = `state-${id}`
    const partial = join(slot.dir, `${stateName}.partial`)
    const diskName = `disk-${id}.qcow2`
    const diskPartial = join(slot.dir, `${diskName}.partial`)
    const workDir = join(slot.dir, 'template')
    await rm(workDir, { recursive: true, force: true })
    await mkdir(workDir, { mode: 0o700 })
    try {
      const { bootMs, saveMs, disk } = await build({ stateFile: partial, workDir, diskFile: diskPartial })
      await rename(partial, join(slot.dir, stateName))
      if (disk) await rename(diskPartial, join(slot.dir, diskName))
      const manifest: SnapshotManifest = {
        formatVersion: SNAPSHOT_FORMAT_VERSION,
        id,
        key: slot.key,
        facts: slot.facts,
        stateFile: stateName,
        stateBytes: (await stat(join(slot.dir, stateName))).size,
        createdAt: new Date().toISOString(),
        bootMs,
        saveMs,
        ...(disk ? { diskFile: diskName } : {}),
      }
      await writeFileAtomic(join(slot.dir, SNAPSHOT_MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`, 0o600)
      debug('snapshot %s saved in %s (%d bytes, boot %d ms, save %d ms)', id, slot.dir, manifest.stateBytes, bootMs, saveMs)
      return manifest
    } finally {
      await rm(partial, { force: true })
      await rm(diskPartial, { force: true })
      await rm(workDir, { recursive: true, force: true })
    }
  })
}

/**
 * A restore from snapshot `id` proved it broken (QEMU rejected the state, or the guest was not right
 * after loading; a timeout proves nothing): delete it so the next create rebuilds it — unless someone
 * already replaced it with another build.
 */
export async function invalidateSnapshot(slot: SnapshotSlot, id: string, reason: string): Promise<void> {
  await withSlotLock(slot, async () => {
    const current = await readSnapshot(slot)
    if (current.status === 'ready' && current.manifest.id !== id) return
    debug('deleting snapshot %s in %s: %s', id, slot.dir, reason)
    await removeSnapshotFiles(slot.dir)
  })
}

/**
 * The manifest first (a snapshot without one is not used), then every state file and frozen disk. A
 * restore still reading an unlinked file keeps its copy; a VM on a removed frozen disk too (QEMU holds it open).
 */
async function removeSnapshotFiles(dir: string): Promise<void> {
  await rm(join(dir, SNAPSHOT_MANIFEST_FILE), { force: true })
  for (const entry of await readdir(dir).catch(() => [] as string[])) {
    if (entry.startsWith('state-') || entry.startsWith('disk-')) await rm(join(dir, entry), { force: true })
  }
}

async function withSlotLock<T>(slot: SnapshotSlot, work: () => Promise<T>): Promise<T> {
  await mkdir(slot.dir, { recursive: true, mode: 0o700 })
  const waitMs = scaleTimeout(SNAPSHOT_LOCK_WAIT_MS)
  let release: () => Promise<void>
  try {
    release = await lockfile.lock(slot.dir, {
      lockfilePath: `${slot.dir}.lock`,
      stale: SNAPSHOT_LOCK_STALE_MS,
      retries: { retries: Math.ceil(waitMs / 250), minTimeout: 250, maxTimeout: 250, factor: 1 },
    })
  } catch (error) {
    throw new VmPoolTimeoutError({
      code: 'VMPOOL_TIMEOUT',
      provider: 'qemu',
      operation: 'create',
      timeoutName: 'SNAPSHOT_LOCK_WAIT_MS',
      timeoutMs: waitMs,
      message: `gave up after ${waitMs} ms waiting for another process to finish the snapshot in ${slot.dir} (SNAPSHOT_LOCK_WAIT_MS): ${(error as Error).message}`,
      hint: 'on a slow machine set VM_POOL_TIMEOUT_SCALE=2; or start without snapshots: qemuProvider({ snapshot: false })',
      cause: error,
    })
  }
  try {
    return await work()
  } finally {
    await release().catch(() => {})
  }
}

/**
 * Save the running guest to `file`: stop it (so the file holds one consistent state and nothing is
 * re-sent), then migrate to a `cat` writing the file. Returns once QEMU reports the migration completed.
 */
export async function saveGuestState(qmpSocket: QmpTarget, file: string): Promise<void> {
  await runQmpCommand(qmpSocket, 'stop')
  await runQmpCommand(qmpSocket, 'migrate', { uri: `exec:cat > ${quoteShellArg(file)}` })
  const timeoutMs = scaleTimeout(SNAPSHOT_SAVE_TIMEOUT_MS)
  const deadline = performance.now() + timeoutMs
  for (;;) {
    const info = (await runQmpCommand(qmpSocket, 'query-migrate')) as { status?: string; 'error-desc'?: string }
    if (info.status === 'completed') return
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new VmPoolError({ code: 'VMPOOL_SNAPSHOT_INVALID', provider: 'qemu', operation: 'snapshot', message: `saving the guest to ${file} failed: ${info['error-desc'] ?? info.status}`, hint: 'is the disk full? (the state file is about the size of the guest memory in use)' })
    }
    if (performance.now() > deadline) {
      throw new VmPoolTimeoutError({ code: 'VMPOOL_TIMEOUT', provider: 'qemu', operation: 'snapshot', timeoutName: 'SNAPSHOT_SAVE_TIMEOUT_MS', timeoutMs, message: `saving the guest to ${file} did not finish in ${timeoutMs} ms (SNAPSHOT_SAVE_TIMEOUT_MS; last status ${info.status ?? 'unknown'})` })
    }
    await sleep(50)
  }
}

/**
 * A QEMU started with `-incoming` loads the saved guest, which was stopped when it was saved, so it
 * stays paused afterwards. `cont` sent while QEMU still loads (status `inmigrate`) is lost and the
 * guest never runs: poll `query-status` until the load is over, then `cont`. Throws
 * VMPOOL_SNAPSHOT_INVALID when QEMU exits (it rejected the state) or reports a wrong state, and
 * VMPOOL_BOOT_TIMEOUT (`timeoutName`) when `deadline` passes first: a slow load is no proof of a broken one.
 */
export async function resumeRestoredGuest(options: { qmpSocket: QmpTarget; identity: ProcessIdentity; deadline: number; timeoutName: string; timeoutMs: number; vm: string; isAlive?: () => Promise<boolean> }): Promise<void> {
  let status = 'unknown'
  for (;;) {
    if (!(options.isAlive ? await options.isAlive() : isProcessAlive(options.identity))) {
      throw new VmPoolError({ code: 'VMPOOL_SNAPSHOT_INVALID', provider: 'qemu', operation: 'create', vm: options.vm, message: 'QEMU exited while loading the saved guest state (a corrupt or incompatible snapshot)' })
    }
    try {
      status = ((await runQmpCommand(options.qmpSocket, 'query-status')) as { status: string }).status
    } catch (error) {
      // The monitor socket may not accept yet, or QEMU is exiting: the liveness check above decides.
      debug('%s: query-status failed while loading (%s)', options.vm, (error as Error).message)
    }
    if (status === 'running') return
    if (status === 'paused' || status === 'postmigrate' || status === 'prelaunch') {
      await runQmpCommand(options.qmpSocket, 'cont')
      return
    }
    if (status !== 'inmigrate' && status !== 'unknown') {
      throw new VmPoolError({ code: 'VMPOOL_SNAPSHOT_INVALID', provider: 'qemu', operation: 'create', vm: options.vm, message: `the restored guest is in state ${JSON.stringify(status)} instead of paused after loading` })
    }
    if (performance.now() > options.deadline) {
      throw new VmPoolTimeoutError({
        code: 'VMPOOL_BOOT_TIMEOUT',
        provider: 'qemu',
        operation: 'create',
        vm: options.vm,
        timeoutName: options.timeoutName,
        timeoutMs: options.timeoutMs,
        message: `QEMU was still loading the saved guest state when ${options.timeoutName} (${options.timeoutMs} ms) ran out (status ${status}); the snapshot is kept`,
        hint: 'on a slow or busy machine set VM_POOL_TIMEOUT_SCALE=2 (or higher); the VM was killed',
      })
    }
    await sleep(STATUS_POLL_INTERVAL_MS)
  }
}

export interface SnapshotStatusLine {
  status: 'ready' | 'missing' | 'stale'
  text: string
}

/** One line for `vm-pool doctor`. */
export function describeSnapshotState(slot: SnapshotSlot, state: SnapshotState): SnapshotStatusLine {
  if (state.status === 'ready') {
    const mb = Math.round(state.manifest.stateBytes / 1e6)
    return { status: 'ready', text: `ready in ${slot.dir} (${mb} MB, saved ${state.manifest.createdAt}; the template booted in ${state.manifest.bootMs} ms)` }
  }
  if (state.status === 'stale') return { status: 'stale', text: `stale in ${slot.dir} (${state.reason}): the next create rebuilds it` }
  return { status: 'missing', text: `none yet in ${slot.dir}: the first create boots a template and saves it` }
}
