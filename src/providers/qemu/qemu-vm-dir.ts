/**
 * What lives in a QEMU VM's directory, `<stateDir>/qemu/<name>/` (docs/qemu.md), and the one module
 * that spells those file names, checks the monitor socket's path length and reads the JSON files
 * through their schemas. A snapshot template's work dir holds the same per-run files. Lima's
 * `pkg/store/filenames` is the model: everything else asks this list.
 */
import { readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { z } from 'zod'
import { formatZodError } from '../../config/zod-error.js'
import { VmPoolError, invalidOptions } from '../../errors.js'
import { createDebug } from '../../util/debug.js'
import { writeFileAtomic } from '../../util/fs-atomic.js'
import type { ProcessIdentity } from '../../util/process-info.js'
import { VM_NAME_PATTERN } from '../../util/vm-name.js'
import type { VmRecord } from '../vm-provider.js'

export const VM_DIR_FILES = Object.freeze({
  /** The `VmRecord`, written once the guest answered: a dir without it is a create in progress or a leftover. */
  record: 'record.json',
  /** The QEMU process as vm-pool saw it start: pid + kernel start time (survives pid reuse), port, accel. */
  process: 'process.json',
  /**
   * Written by QEMU itself (`-pidfile`) before it daemonizes. The only trace of a QEMU whose creator died
   * before `process.json` existed; trusted only when that pid's command line names this very file.
   */
  pid: 'qemu.pid',
  /** QEMU's monitor (QMP): a unix socket, so its path must fit in sun_path. */
  qmp: 'qmp.sock',
  /** The guest's serial console. */
  serial: 'serial.log',
  /** The VM's own copy of the image's client key: rebuilding the image never locks out a running VM. */
  clientKey: 'client_key',
  /** The pinned guest host key under the alias `vm-pool-<name>`, for a person's `ssh` (see `describe`). */
  knownHosts: 'known_hosts',
  /** Images with a disk: this VM's own qcow2 overlay over the image's (or a snapshot's frozen) disk (disk-overlay.ts). */
  disk: 'disk.qcow2',
})

export type VmDirFile = keyof typeof VM_DIR_FILES

/** What one QEMU run leaves; a reset replaces these (the disk overlay too) and keeps the key, the record and known_hosts. */
export const INSTANCE_FILES: readonly VmDirFile[] = ['process', 'pid', 'qmp', 'serial', 'disk']

/** sun_path is 108 bytes on Linux, the terminating NUL included. */
export const MAX_UNIX_SOCKET_PATH_BYTES = 107

/** `record.data` of a QEMU VM: how any process reaches it. No secrets: the key is a path. */
export const qemuRecordDataSchema = z.looseObject({
  host: z.string(),
  port: z.number().int(),
  username: z.string(),
  hostKey: z.string(),
  keyPath: z.string(),
  vmDir: z.string(),
  pid: z.number().int(),
  accel: z.enum(['kvm', 'tcg']),
  image: z.string(),
  /** From QEMU start to the first finished command. */
  bootMs: z.number().optional(),
  /** The snapshot id the VM was restored from; absent for a cold boot. */
  restoredFrom: z.string().optional(),
  /** The image's `sshMaxSessions`: exec channels per SSH connection (absent: one, for dropbear). */
  sshMaxSessions: z.number().int().positive().optional(),
})

export type QemuRecordData = z.output<typeof qemuRecordDataSchema>

/** `record.data` of a QEMU VM, checked; anything else is refused with VMPOOL_INVALID_OPTIONS naming what is wrong. */
export function parseQemuRecordData(record: VmRecord): QemuRecordData {
  const parsed = qemuRecordDataSchema.safeParse(record.data)
  if (!parsed.success) throw invalidOptions(`not a qemu VM record: ${formatZodError(parsed.error, record.data)}`, { provider: 'qemu', vm: record.name })
  return parsed.data
}

/** Loose where a newer vm-pool may add fields; strict about what this one relies on. */
const qemuVmRecordSchema = z.looseObject({
  name: z.string().regex(VM_NAME_PATTERN),
  provider: z.literal('qemu'),
  createdAt: z.string(),
  spec: z.looseObject({
    name: z.string(),
    image: z.string().optional(),
    cpus: z.number().int().optional(),
    memoryMiB: z.number().int().optional(),
    diskGiB: z.number().optional(),
    labels: z.record(z.string(), z.string()).optional(),
  }),
  data: qemuRecordDataSchema,
})

const qemuProcessFileSchema = z.object({
  pid: z.number().int().positive(),
  host: z.string(),
  startTime: z.number().nullable(),
  port: z.number().int().positive(),
  accel: z.enum(['kvm', 'tcg']),
})

/** `process.json`: who the QEMU of this dir is, and where its guest's SSH is forwarded. */
export type QemuProcessFile = ProcessIdentity & z.output<typeof qemuProcessFileSchema>

const debug = createDebug('vm-pool:qemu')

/** One VM's (or snapshot template's) directory. Creating the object touches nothing on disk. */
export class QemuVmDir {
  readonly dir: string
  /** The QEMU of this dir runs with `-name vm-pool-<instanceName>`: the VM's name, or the template's. */
  readonly instanceName: string

  constructor(dir: string, instanceName: string) {
    this.dir = dir
    this.instanceName = instanceName
  }

  /** `<root>/<name>`: `root` is the provider's `<stateDir>/qemu`. */
  static of(root: string, name: string): QemuVmDir {
    return new QemuVmDir(join(root, name), name)
  }

  path(file: VmDirFile): string {
    return join(this.dir, VM_DIR_FILES[file])
  }

  /** What the command line of this dir's QEMU says: how a QEMU is recognized when its files cannot be trusted. */
  commandLine(): { name: string; pidFile: string } {
    return { name: this.instanceName, pidFile: this.path('pid') }
  }

  /** QEMU cannot bind a monitor socket whose path does not fit in sun_path: say so before it starts. */
  assertSocketPathFits(context: { vm: string; hint: string }): void {
    const socket = this.path('qmp')
    if (Buffer.byteLength(socket) > MAX_UNIX_SOCKET_PATH_BYTES) {
      throw invalidOptions(`the path of QEMU's monitor socket is too long (${socket} is over ${MAX_UNIX_SOCKET_PATH_BYTES} bytes)`, { provider: 'qemu', vm: context.vm, hint: context.hint })
    }
  }

  /** The record, `undefined` when there is none yet; a file that is not a QEMU record is refused with what is wrong. */
  async readRecord(): Promise<VmRecord | undefined> {
    const json = await this.#readJson('record')
    if (json === undefined) return undefined
    const parsed = qemuVmRecordSchema.safeParse(json)
    if (!parsed.success) {
      throw new VmPoolError({
        code: 'VMPOOL_VM_NOT_FOUND',
        provider: 'qemu',
        message: `${this.path('record')} is not a QEMU VM record: ${formatZodError(parsed.error, json)}`,
        hint: 'delete that VM (vm-pool gc), it cannot be reached',
      })
    }
    // Checked above; the loose schema keeps fields a newer vm-pool wrote, which VmRecord carries as JSON.
    return json as VmRecord
  }

  async writeRecord(record: VmRecord): Promise<void> {
    await writeFileAtomic(this.path('record'), JSON.stringify(record, null, 2), 0o644)
  }

  /** `undefined` when missing or unreadable: the caller falls back to QEMU's own pid file. */
  async readProcess(): Promise<QemuProcessFile | undefined> {
    const json = await this.#readJson('process').catch((error: unknown) => debug('%s: %s', this.path('process'), (error as Error).message))
    if (json === undefined) return undefined
    const parsed = qemuProcessFileSchema.safeParse(json)
    if (!parsed.success) debug('%s is not a process file: %s', this.path('process'), formatZodError(parsed.error, json))
    return parsed.success ? parsed.data : undefined
  }

  async writeProcess(identity: QemuProcessFile): Promise<void> {
    await writeFileAtomic(this.path('process'), JSON.stringify(identity), 0o644)
  }

  /** The pid QEMU wrote, unchecked: who that pid is now is for the caller to prove. */
  async readPidFile(): Promise<number | undefined> {
    const text = await readFile(this.path('pid'), 'utf8').catch(() => undefined)
    const pid = Number(text?.trim())
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  }

  /** An ssh known_hosts file pinning `hostKey` (an OpenSSH public key line) under `alias`. */
  async writeKnownHosts(alias: string, hostKey: string): Promise<void> {
    await writeFile(this.path('knownHosts'), `${alias} ${hostKey.trim()}\n`, { mode: 0o644 })
  }

  async removeInstanceFiles(): Promise<void> {
    for (const file of INSTANCE_FILES) await rm(this.path(file), { force: true })
  }

  async #readJson(file: VmDirFile): Promise<unknown> {
    let text: string
    try {
      text = await readFile(this.path(file), 'utf8')
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw error
    }
    try {
      return JSON.parse(text) as unknown
    } catch (error) {
      throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: 'qemu', message: `${this.path(file)} is not JSON: ${(error as Error).message}`, cause: error })
    }
  }
}

/** Names of the VM dirs under `root` (the accel probe cache and other files are skipped). */
export async function listVmDirNames(root: string): Promise<string[]> {
  try {
    const entries = await readdir(root, { withFileTypes: true })
    return entries.filter((entry) => entry.isDirectory() && VM_NAME_PATTERN.test(entry.name)).map((entry) => entry.name).sort()
  } catch {
    return []
  }
}
