/**
 * A tiny ISO 9660 writer for cloud-init NoCloud seeds: one root directory, a few small files, a volume
 * label. Written here so importing a cloud image needs no genisoimage/xorriso on the host.
 *
 * Names are stored as ISO 9660 identifiers (`USER-DATA.;1`); Linux's iso9660 driver (default
 * `map=normal`) shows them lowercased without the `.;1`, i.e. as `user-data`, which is what cloud-init
 * reads. blkid reports TYPE=iso9660 and LABEL=<label>, which is how NoCloud finds the seed.
 */

const SECTOR = 2048
/** System area: 16 sectors before the first volume descriptor. */
const FIRST_DESCRIPTOR_SECTOR = 16

export interface IsoFile {
  /** Lowercase `[a-z0-9_-]` name, as the guest should see it (`user-data`). */
  name: string
  data: Buffer | string
}

/** The image bytes: system area, primary volume descriptor, terminator, path tables, root dir, files. */
export function makeIso9660Image(label: string, files: IsoFile[], now = new Date()): Buffer {
  if (!/^[a-zA-Z0-9_]{1,32}$/.test(label)) throw new Error(`invalid ISO 9660 volume label ${JSON.stringify(label)}`)
  const sorted = [...files].sort((a, b) => identifier(a.name).localeCompare(identifier(b.name)))
  for (const file of sorted) {
    if (!/^[a-z0-9_-]{1,30}$/.test(file.name)) throw new Error(`invalid seed file name ${JSON.stringify(file.name)}`)
  }
  const pathTableL = FIRST_DESCRIPTOR_SECTOR + 2
  const pathTableM = pathTableL + 1
  const rootSector = pathTableM + 1
  let next = rootSector + 1
  const placed = sorted.map((file) => {
    const data = Buffer.isBuffer(file.data) ? file.data : Buffer.from(file.data, 'utf8')
    const entry = { id: identifier(file.name), data, sector: next }
    next += Math.max(1, Math.ceil(data.length / SECTOR))
    return entry
  })
  const totalSectors = next
  const image = Buffer.alloc(totalSectors * SECTOR)

  const root = Buffer.alloc(SECTOR)
  let at = 0
  at += directoryRecord(Buffer.from([0]), rootSector, SECTOR, true, now).copy(root, at)
  at += directoryRecord(Buffer.from([1]), rootSector, SECTOR, true, now).copy(root, at)
  for (const entry of placed) {
    const record = directoryRecord(Buffer.from(entry.id, 'ascii'), entry.sector, entry.data.length, false, now)
    if (at + record.length > SECTOR) throw new Error('too many seed files for one directory sector')
    at += record.copy(root, at)
  }
  root.copy(image, rootSector * SECTOR)
  for (const entry of placed) entry.data.copy(image, entry.sector * SECTOR)

  // Path tables: just the root directory (10 bytes), little-endian (L) and big-endian (M).
  const pathEntry = (bigEndian: boolean): Buffer => {
    const entry = Buffer.alloc(10)
    entry[0] = 1
    if (bigEndian) entry.writeUInt32BE(rootSector, 2)
    else entry.writeUInt32LE(rootSector, 2)
    if (bigEndian) entry.writeUInt16BE(1, 6)
    else entry.writeUInt16LE(1, 6)
    return entry
  }
  pathEntry(false).copy(image, pathTableL * SECTOR)
  pathEntry(true).copy(image, pathTableM * SECTOR)

  const pvd = Buffer.alloc(SECTOR, 0)
  pvd[0] = 1
  pvd.write('CD001', 1, 'ascii')
  pvd[6] = 1
  pvd.write(padded('LINUX', 32), 8, 'ascii')
  pvd.write(padded(label, 32), 40, 'ascii')
  bothEndian32(totalSectors).copy(pvd, 80)
  bothEndian16(1).copy(pvd, 120)
  bothEndian16(1).copy(pvd, 124)
  bothEndian16(SECTOR).copy(pvd, 128)
  bothEndian32(10).copy(pvd, 132)
  pvd.writeUInt32LE(pathTableL, 140)
  pvd.writeUInt32BE(pathTableM, 148)
  directoryRecord(Buffer.from([0]), rootSector, SECTOR, true, now).copy(pvd, 156)
  for (const [offset, length] of [[190, 128], [318, 128], [446, 128], [574, 128], [702, 37], [739, 37], [776, 37]] as const) {
    pvd.write(' '.repeat(length), offset, 'ascii')
  }
  pvd.write(padded('VM-POOL', 128), 446, 'ascii')
  longDate(now).copy(pvd, 813)
  longDate(now).copy(pvd, 830)
  longDate(undefined).copy(pvd, 847)
  longDate(undefined).copy(pvd, 864)
  pvd[881] = 1
  pvd.copy(image, FIRST_DESCRIPTOR_SECTOR * SECTOR)

  const terminator = Buffer.alloc(SECTOR, 0)
  terminator[0] = 255
  terminator.write('CD001', 1, 'ascii')
  terminator[6] = 1
  terminator.copy(image, (FIRST_DESCRIPTOR_SECTOR + 1) * SECTOR)
  return image
}

/** `user-data` → `USER-DATA.;1` (name, the mandatory separator, version 1). */
function identifier(name: string): string {
  return `${name.toUpperCase()}.;1`
}

function directoryRecord(id: Buffer, sector: number, size: number, directory: boolean, now: Date): Buffer {
  const length = 33 + id.length + (id.length % 2 === 0 ? 1 : 0)
  const record = Buffer.alloc(length)
  record[0] = length
  bothEndian32(sector).copy(record, 2)
  bothEndian32(size).copy(record, 10)
  record[18] = now.getUTCFullYear() - 1900
  record[19] = now.getUTCMonth() + 1
  record[20] = now.getUTCDate()
  record[21] = now.getUTCHours()
  record[22] = now.getUTCMinutes()
  record[23] = now.getUTCSeconds()
  record[25] = directory ? 2 : 0
  bothEndian16(1).copy(record, 28)
  record[32] = id.length
  id.copy(record, 33)
  return record
}

function bothEndian32(value: number): Buffer {
  const buffer = Buffer.alloc(8)
  buffer.writeUInt32LE(value, 0)
  buffer.writeUInt32BE(value, 4)
  return buffer
}

function bothEndian16(value: number): Buffer {
  const buffer = Buffer.alloc(4)
  buffer.writeUInt16LE(value, 0)
  buffer.writeUInt16BE(value, 2)
  return buffer
}

/** The 17-byte volume descriptor date: `YYYYMMDDHHMMSScc` digits and a GMT offset byte; all zeros = not set. */
function longDate(date: Date | undefined): Buffer {
  const buffer = Buffer.alloc(17, 0)
  if (!date) {
    buffer.write('0'.repeat(16), 0, 'ascii')
    return buffer
  }
  const two = (value: number) => String(value).padStart(2, '0')
  buffer.write(`${date.getUTCFullYear()}${two(date.getUTCMonth() + 1)}${two(date.getUTCDate())}${two(date.getUTCHours())}${two(date.getUTCMinutes())}${two(date.getUTCSeconds())}00`, 0, 'ascii')
  return buffer
}

function padded(text: string, length: number): string {
  return text.padEnd(length, ' ').slice(0, length)
}
