import { constants } from 'node:fs'
import { chmod, link, lstat, mkdir, open, symlink, unlink, utimes, type FileHandle } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { VmPoolError } from '../../errors.js'
import { createDebug } from '../../util/debug.js'
import { decodeTarHeader, isZeroBlock, parsePaxRecords, TAR_BLOCK_BYTES, type TarHeader } from './tar-header.js'
import { judgeEntryPath, judgeHardLinkTarget } from './tar-entry-path.js'

const debug = createDebug('vm-pool:files')

/** Longest pax / GNU long-name record accepted: a real one is a path, not megabytes. */
const MAX_META_BYTES = 1024 * 1024

/** An entry whose data is being read: into a file, into a long-name / pax record, or skipped. */
interface CurrentEntry {
  header: TarHeader
  remaining: number
  padding: number
  file: FileHandle | undefined
  path: string
  meta: Buffer[] | undefined
}

/** Where the archive came from and what to call things in errors. */
export interface ExtractContext {
  provider: string
  vm: string
  /** The guest directory the archive holds, for messages. */
  source: string
}

/**
 * Writes a tar stream (from the guest's `tar -c`) under `root` on this machine (`getDirectory`),
 * chunk by chunk: `write()` resolves when the chunk is on disk, so a slow disk slows the guest down
 * instead of filling memory. Refused with VMPOOL_UNSAFE_PATH, before anything is written for that
 * entry: an absolute path or a `..` component (tar-entry-path.ts), a path through a symlink on this
 * machine (one the archive made, or one that was there: a link is kept as a link, never written
 * through), a hard link to outside the archive. Permission bits (not set-id bits) and mtimes are
 * kept; directories get theirs at the end, so a read-only directory can still be filled.
 */
export class TarExtractor {
  readonly #root: string
  readonly #context: ExtractContext
  #buffer: Buffer = Buffer.alloc(0)
  /** The entry whose data is being read. */
  #current: CurrentEntry | undefined
  #pending: { path?: string; linkPath?: string } = {}
  #directories: Array<{ path: string; mode: number; mtimeSeconds: number }> = []
  #ended = false
  #entries = 0

  constructor(root: string, context: ExtractContext) {
    this.#root = resolve(root)
    this.#context = context
  }

  /** Entries written so far. */
  get entries(): number {
    return this.#entries
  }

  /** Writes run one after the other even if a caller does not wait for the previous one. */
  #queue: Promise<void> = Promise.resolve()

  write(chunk: Buffer): Promise<void> {
    const run = this.#queue.then(() => this.#write(chunk))
    // A failed write fails this call; the next ones see the same state and fail on their own.
    this.#queue = run.catch(() => undefined)
    return run
  }

  async #write(chunk: Buffer): Promise<void> {
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk])
    for (;;) {
      if (this.#ended) return
      if (this.#current) {
        if (!(await this.#readData())) return
        continue
      }
      if (this.#buffer.length < TAR_BLOCK_BYTES) return
      const block = this.#buffer.subarray(0, TAR_BLOCK_BYTES)
      this.#buffer = this.#buffer.subarray(TAR_BLOCK_BYTES)
      if (isZeroBlock(block)) {
        this.#ended = true
        return
      }
      let header: TarHeader
      try {
        header = decodeTarHeader(block)
      } catch (error) {
        throw this.#corrupt((error as Error).message)
      }
      await this.#begin(header)
    }
  }

  /** After the last chunk: apply directory modes, fail on a truncated archive. */
  async end(): Promise<void> {
    await this.#queue
    if (this.#current || (!this.#ended && this.#buffer.length > 0)) {
      await this.#current?.file?.close()
      throw this.#corrupt('the archive ended in the middle of an entry')
    }
    for (const directory of this.#directories.reverse()) {
      await chmod(directory.path, directory.mode & 0o777)
      await utimes(directory.path, directory.mtimeSeconds, directory.mtimeSeconds).catch(() => undefined)
    }
  }

  /** Close a file left open by a failed write. */
  async abort(): Promise<void> {
    await this.#current?.file?.close().catch(() => undefined)
    this.#current = undefined
  }

  async #begin(header: TarHeader): Promise<void> {
    const padding = (TAR_BLOCK_BYTES - (header.size % TAR_BLOCK_BYTES)) % TAR_BLOCK_BYTES
    const next: CurrentEntry = { header, remaining: header.size, padding, file: undefined, path: '', meta: undefined }
    if (header.type === 'pax' || header.type === 'pax-global' || header.type === 'gnu-long-name' || header.type === 'gnu-long-link') {
      if (header.size > MAX_META_BYTES) throw this.#corrupt(`a ${header.typeFlag} record of ${header.size} bytes`)
      next.meta = []
      this.#current = next
      return
    }
    const name = this.#pending.path ?? header.name
    const linkName = this.#pending.linkPath ?? header.linkName
    this.#pending = {}
    const parts = this.#judge(name, judgeEntryPath(name))
    const path = join(this.#root, ...parts)
    if (header.type === 'directory') {
      if (parts.length > 0) {
        await this.#ensureParents(parts, name)
        await this.#ensureDirectory(path, name)
      }
      this.#directories.push({ path, mode: header.mode, mtimeSeconds: header.mtimeSeconds })
    } else if (header.type === 'file') {
      await this.#ensureParents(parts, name)
      await this.#replaceable(path, name)
      next.file = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, 0o600)
      next.path = path
    } else if (header.type === 'symlink') {
      await this.#ensureParents(parts, name)
      await this.#replaceable(path, name)
      await symlink(linkName, path)
    } else if (header.type === 'hardlink') {
      const target = join(this.#root, ...this.#judge(linkName, judgeHardLinkTarget(linkName)))
      await this.#ensureParents(parts, name)
      const targetStats = await lstat(target).catch(() => undefined)
      if (!targetStats?.isFile()) throw this.#unsafe(name, `is a hard link to ${JSON.stringify(linkName)}, which is not a file this archive wrote`)
      await this.#replaceable(path, name)
      await link(target, path)
    } else if (header.type === 'special') {
      debug('getDirectory: skipping %s (a device or FIFO)', name)
    } else {
      throw this.#corrupt(`entry ${JSON.stringify(name)} has the unsupported type ${JSON.stringify(header.typeFlag)}`)
    }
    if (header.type !== 'special') this.#entries++
    this.#current = header.size > 0 || padding > 0 ? next : undefined
    if (header.size === 0) await this.#finishFile(next)
  }

  /** Consume entry data from the buffer; false when more input is needed. */
  async #readData(): Promise<boolean> {
    const current = this.#current!
    if (current.remaining > 0) {
      if (this.#buffer.length === 0) return false
      const take = Math.min(current.remaining, this.#buffer.length)
      const data = this.#buffer.subarray(0, take)
      this.#buffer = this.#buffer.subarray(take)
      current.remaining -= take
      if (current.meta) current.meta.push(Buffer.from(data))
      else if (current.file) await current.file.write(data)
      if (current.remaining > 0) return false
      if (current.meta) this.#finishMeta(current.header, Buffer.concat(current.meta))
      else await this.#finishFile(current)
    }
    if (this.#buffer.length < current.padding) return false
    this.#buffer = this.#buffer.subarray(current.padding)
    this.#current = undefined
    return true
  }

  async #finishFile(current: CurrentEntry): Promise<void> {
    if (!current.file) return
    const { file, header, path } = current
    current.file = undefined
    await file.chmod(header.mode & 0o777)
    await file.close()
    await utimes(path, header.mtimeSeconds, header.mtimeSeconds).catch(() => undefined)
  }

  #finishMeta(header: TarHeader, data: Buffer): void {
    if (header.type === 'gnu-long-name') this.#pending.path = data.toString('utf8').replace(/\0+$/, '')
    else if (header.type === 'gnu-long-link') this.#pending.linkPath = data.toString('utf8').replace(/\0+$/, '')
    else if (header.type === 'pax') {
      let records: Record<string, string>
      try {
        records = parsePaxRecords(data)
      } catch (error) {
        throw this.#corrupt((error as Error).message)
      }
      if (records.path !== undefined) this.#pending.path = records.path
      if (records.linkpath !== undefined) this.#pending.linkPath = records.linkpath
    }
  }

  /** Every parent under the root exists as a real directory (made if missing); a symlink among them is refused. */
  async #ensureParents(parts: string[], name: string): Promise<void> {
    let path = this.#root
    await mkdir(path, { recursive: true })
    for (const part of parts.slice(0, -1)) {
      path = join(path, part)
      await this.#ensureDirectory(path, name)
    }
  }

  async #ensureDirectory(path: string, name: string): Promise<void> {
    const stats = await lstat(path).catch(() => undefined)
    if (!stats) return void (await mkdir(path, { mode: 0o700 }))
    if (stats.isSymbolicLink()) throw this.#unsafe(name, `goes through the symlink ${path} on this machine`)
    if (!stats.isDirectory()) throw this.#unsafe(name, `needs ${path} to be a directory, but it is a file`)
  }

  /** What is at `path` may be replaced by a file or link: nothing, a file or a symlink (removed, never followed). */
  async #replaceable(path: string, name: string): Promise<void> {
    const stats = await lstat(path).catch(() => undefined)
    if (!stats) return
    if (stats.isDirectory()) throw this.#unsafe(name, `would replace the directory ${path}`)
    await unlink(path)
  }

  #judge(name: string, verdict: ReturnType<typeof judgeEntryPath>): string[] {
    if (!verdict.ok) throw this.#unsafe(name, verdict.reason)
    return verdict.parts
  }

  #unsafe(name: string, why: string): VmPoolError {
    const { provider, vm, source } = this.#context
    return new VmPoolError({
      code: 'VMPOOL_UNSAFE_PATH',
      provider,
      vm,
      operation: 'getDirectory',
      message: `refusing the archive of ${source}: entry ${JSON.stringify(name)} ${why}; nothing is written outside ${this.#root}`,
      hint: 'an archive a normal `tar -c` makes never does this: the guest may be compromised, or a symlink in the target directory points elsewhere (remove it, or extract into an empty directory)',
      details: { entry: name, target: this.#root },
    })
  }

  #corrupt(why: string): VmPoolError {
    const { provider, vm, source } = this.#context
    return new VmPoolError({ code: 'VMPOOL_EXEC_FAILED', provider, vm, operation: 'getDirectory', message: `the archive of ${source} is not a valid tar stream: ${why}` })
  }
}
