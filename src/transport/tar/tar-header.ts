/**
 * The 512-byte header of a tar archive (POSIX ustar, with the pax `x` records and GNU `L`/`K` long
 * names that GNU tar and busybox tar write): encode for the archives `putDirectory` sends, decode for
 * the ones `getDirectory` receives. Pure functions.
 */

export const TAR_BLOCK_BYTES = 512

export type TarEntryType = 'file' | 'directory' | 'symlink' | 'hardlink' | 'pax' | 'pax-global' | 'gnu-long-name' | 'gnu-long-link' | 'special' | 'unknown'

export interface TarHeader {
  /** From the header alone (ustar prefix joined); long-name records override it. */
  name: string
  mode: number
  size: number
  mtimeSeconds: number
  type: TarEntryType
  /** The raw type flag, for messages. */
  typeFlag: string
  linkName: string
}

const TYPES: Record<string, TarEntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'special',
  '4': 'special',
  '6': 'special',
  '5': 'directory',
  x: 'pax',
  g: 'pax-global',
  L: 'gnu-long-name',
  K: 'gnu-long-link',
}

function readString(block: Buffer, offset: number, length: number): string {
  const field = block.subarray(offset, offset + length)
  const end = field.indexOf(0)
  return field.subarray(0, end < 0 ? length : end).toString('utf8')
}

/** Octal text, or GNU base-256 (high bit of the first byte set) for values that do not fit. */
function readNumber(block: Buffer, offset: number, length: number): number {
  const field = block.subarray(offset, offset + length)
  if (field[0]! & 0x80) {
    let value = field[0]! & 0x7f
    for (let i = 1; i < length; i++) value = value * 256 + field[i]!
    return value
  }
  const text = field.toString('latin1').replace(/[\0 ]+$/, '').trim()
  if (text === '') return 0
  if (!/^[0-7]+$/.test(text)) throw new Error(`bad number field ${JSON.stringify(text)}`)
  return parseInt(text, 8)
}

function checksumOf(block: Buffer): number {
  let sum = 0
  for (let i = 0; i < TAR_BLOCK_BYTES; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!
  return sum
}

export function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < TAR_BLOCK_BYTES; i++) if (block[i] !== 0) return false
  return true
}

/** Decode one header block; throws on a checksum mismatch (not a tar archive, or a corrupt one). */
export function decodeTarHeader(block: Buffer): TarHeader {
  const stored = readNumber(block, 148, 8)
  if (stored !== checksumOf(block)) throw new Error('header checksum mismatch (not a tar archive, or a corrupt one)')
  const typeFlag = String.fromCharCode(block[156]!)
  const magic = block.subarray(257, 263).toString('latin1')
  let name = readString(block, 0, 100)
  // POSIX ustar splits long names into prefix + name; GNU archives ("ustar  ") use those bytes otherwise.
  if (magic === 'ustar\0') {
    const prefix = readString(block, 345, 155)
    if (prefix) name = `${prefix}/${name}`
  }
  return {
    name,
    mode: readNumber(block, 100, 8),
    size: readNumber(block, 124, 12),
    mtimeSeconds: readNumber(block, 136, 12),
    type: TYPES[typeFlag] ?? 'unknown',
    typeFlag,
    linkName: readString(block, 157, 100),
  }
}

/** `path` and `linkpath` of a pax extended header (`<length> <key>=<value>\n` records). */
export function parsePaxRecords(data: Buffer): Record<string, string> {
  const records: Record<string, string> = {}
  let offset = 0
  while (offset < data.length) {
    const space = data.indexOf(0x20, offset)
    if (space < 0) break
    const length = Number(data.subarray(offset, space).toString('latin1'))
    if (!Number.isInteger(length) || length <= 0 || offset + length > data.length) throw new Error('bad pax extended header')
    const record = data.subarray(space + 1, offset + length - 1).toString('utf8')
    const equals = record.indexOf('=')
    if (equals > 0) records[record.slice(0, equals)] = record.slice(equals + 1)
    offset += length
  }
  return records
}

export interface TarHeaderInput {
  name: string
  type: 'file' | 'directory' | 'symlink' | 'pax'
  mode: number
  size: number
  mtimeSeconds: number
  linkName?: string
}

function writeString(block: Buffer, offset: number, length: number, value: string): boolean {
  const bytes = Buffer.from(value, 'utf8')
  if (bytes.length > length) return false
  bytes.copy(block, offset)
  return true
}

function writeOctal(block: Buffer, offset: number, length: number, value: number): void {
  const digits = Math.floor(value).toString(8)
  if (digits.length <= length - 1) {
    block.write(digits.padStart(length - 1, '0'), offset, 'latin1')
    return
  }
  // Too big for octal (files over 8 GiB): GNU base-256.
  let rest = Math.floor(value)
  for (let i = length - 1; i > 0; i--) {
    block[offset + i] = rest % 256
    rest = Math.floor(rest / 256)
  }
  block[offset] = 0x80
}

const FLAGS: Record<TarHeaderInput['type'], string> = { file: '0', directory: '5', symlink: '2', pax: 'x' }

/**
 * One ustar header, or `undefined` when the name or link name does not fit (the writer then puts a pax
 * header with `path` / `linkpath` before it and calls this again with a short stand-in name).
 */
export function encodeTarHeader(input: TarHeaderInput): Buffer | undefined {
  const block = Buffer.alloc(TAR_BLOCK_BYTES)
  let name = input.name
  let prefix = ''
  if (Buffer.byteLength(name) > 100) {
    // A directory's trailing slash stays with its last component.
    const cut = name.lastIndexOf('/', name.length - 2)
    if (cut <= 0) return undefined
    prefix = name.slice(0, cut)
    name = name.slice(cut + 1)
  }
  if (!writeString(block, 0, 100, name) || !writeString(block, 345, 155, prefix)) return undefined
  if (!writeString(block, 157, 100, input.linkName ?? '')) return undefined
  writeOctal(block, 100, 8, input.mode & 0o7777)
  writeOctal(block, 108, 8, 0)
  writeOctal(block, 116, 8, 0)
  writeOctal(block, 124, 12, input.size)
  writeOctal(block, 136, 12, input.mtimeSeconds)
  block.write(FLAGS[input.type], 156, 'latin1')
  block.write('ustar\0' + '00', 257, 'latin1')
  block.fill(0x20, 148, 156)
  const sum = checksumOf(block)
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1')
  return block
}

/** A pax extended header body: `<length> <key>=<value>\n` per record, the length counting itself. */
export function encodePaxRecords(records: Record<string, string>): Buffer {
  const parts: Buffer[] = []
  for (const [key, value] of Object.entries(records)) {
    const body = ` ${key}=${value}\n`
    const bodyLength = Buffer.byteLength(body)
    let length = bodyLength + 1
    while (String(length).length + bodyLength !== length) length = String(length).length + bodyLength
    parts.push(Buffer.from(`${length}${body}`, 'utf8'))
  }
  return Buffer.concat(parts)
}

/** Zero bytes that pad `size` up to a whole block. */
export function paddingFor(size: number): Buffer {
  const rest = size % TAR_BLOCK_BYTES
  return Buffer.alloc(rest === 0 ? 0 : TAR_BLOCK_BYTES - rest)
}
