import { createReadStream } from 'node:fs'
import { lstat, readdir, readlink } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { createDebug } from '../../util/debug.js'
import { encodePaxRecords, encodeTarHeader, paddingFor, TAR_BLOCK_BYTES, type TarHeaderInput } from './tar-header.js'

const debug = createDebug('vm-pool:files')

/**
 * A tar stream of everything under `root` (`putDirectory`): directories (empty ones too), regular
 * files and symlinks (as links, never followed), with their permission bits and mtimes; owners are
 * not recorded (the guest's tar gives the files to the user that extracts them). Sockets, FIFOs and
 * devices are skipped. Read lazily: the stream is only as fast as the guest takes it.
 */
export function packDirectory(root: string): Readable {
  return Readable.from(generate(root), { objectMode: false })
}

async function* generate(root: string): AsyncGenerator<Buffer> {
  const top = await lstat(root)
  yield* header({ name: './', type: 'directory', mode: top.mode, size: 0, mtimeSeconds: top.mtimeMs / 1000 })
  yield* walk(root, '')
  yield Buffer.alloc(TAR_BLOCK_BYTES * 2)
}

async function* walk(dir: string, relative: string): AsyncGenerator<Buffer> {
  for (const name of (await readdir(dir)).sort()) {
    const path = join(dir, name)
    const entry = relative ? `${relative}/${name}` : name
    const stats = await lstat(path)
    const base = { mode: stats.mode, mtimeSeconds: stats.mtimeMs / 1000 }
    if (stats.isDirectory()) {
      yield* header({ ...base, name: `${entry}/`, type: 'directory', size: 0 })
      yield* walk(path, entry)
    } else if (stats.isSymbolicLink()) {
      yield* header({ ...base, name: entry, type: 'symlink', size: 0, linkName: await readlink(path) })
    } else if (stats.isFile()) {
      yield* header({ ...base, name: entry, type: 'file', size: stats.size })
      yield* fileBody(path, stats.size)
    } else {
      debug('putDirectory: skipping %s (not a file, directory or symlink)', path)
    }
  }
}

/** Exactly `size` bytes (the size in the header), zero-padded if the file shrank meanwhile, then block padding. */
async function* fileBody(path: string, size: number): AsyncGenerator<Buffer> {
  let sent = 0
  if (size > 0) {
    for await (const chunk of createReadStream(path, { end: size - 1, highWaterMark: 256 * 1024 })) {
      sent += (chunk as Buffer).length
      yield chunk as Buffer
    }
  }
  if (sent < size) yield Buffer.alloc(size - sent)
  yield paddingFor(size)
}

/** The header, preceded by a pax header when the name or the link target is too long for ustar. */
function* header(input: TarHeaderInput): Generator<Buffer> {
  const block = encodeTarHeader(input)
  if (block) return yield block
  const records = encodePaxRecords({ path: input.name, ...(input.linkName ? { linkpath: input.linkName } : {}) })
  yield encodeTarHeader({ name: 'PaxHeader', type: 'pax', mode: 0o644, size: records.length, mtimeSeconds: input.mtimeSeconds })!
  yield records
  yield paddingFor(records.length)
  yield encodeTarHeader({ ...input, name: input.type === 'directory' ? 'long-name/' : 'long-name', linkName: input.linkName && Buffer.byteLength(input.linkName) > 100 ? 'long-link' : input.linkName })!
}
