/**
 * The NoCloud seed writer: blkid (what cloud-init's ds-identify and NoCloud use to find the seed)
 * must see an iso9660 volume labelled `cidata`, and the directory must hold each file at the sector
 * and length it names, under the ISO 9660 name Linux shows as the lower-case name. That the guest
 * kernel mounts it and cloud-init reads it is shown by test/integration/image-cloud-init.test.ts.
 */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { makeIso9660Image } from '../../src/providers/qemu/images/iso9660-image.js'

const scratch = mkdtempSync(join(tmpdir(), 'vmp-iso-'))
afterAll(() => rmSync(scratch, { recursive: true, force: true }))

/** The root directory's records: name, first sector, length (ISO 9660 §9.1). */
function readRootDirectory(image: Buffer): Array<{ name: string; sector: number; size: number }> {
  const pvd = image.subarray(16 * 2048, 17 * 2048)
  const rootSector = pvd.readUInt32LE(156 + 2)
  const dir = image.subarray(rootSector * 2048, rootSector * 2048 + 2048)
  const entries = []
  for (let at = 0; at < dir.length && dir[at]! > 0; at += dir[at]!) {
    const nameLength = dir[at + 32]!
    entries.push({ name: dir.subarray(at + 33, at + 33 + nameLength).toString('latin1'), sector: dir.readUInt32LE(at + 2), size: dir.readUInt32LE(at + 10) })
  }
  return entries
}

describe('makeIso9660Image (NoCloud seed)', () => {
  test('blkid sees an iso9660 volume labelled cidata', () => {
    const path = join(scratch, 'seed.iso')
    writeFileSync(path, makeIso9660Image('cidata', [{ name: 'meta-data', data: 'instance-id: x\n' }, { name: 'user-data', data: '#cloud-config\n' }]))
    const probe = execFileSync('blkid', ['-p', '-o', 'export', path], { encoding: 'utf8' })
    expect(probe).toMatch(/^TYPE=iso9660$/m)
    expect(probe).toMatch(/^LABEL=cidata$/m)
  })

  test('every file is in the root directory at its sector, with its exact bytes, files larger than a sector too', () => {
    const big = Buffer.alloc(5000, 'x')
    const image = makeIso9660Image('cidata', [
      { name: 'user-data', data: '#cloud-config\nusers: []\n' },
      { name: 'meta-data', data: 'instance-id: abc\n' },
      { name: 'network-config', data: big },
    ])
    expect(image.length % 2048).toBe(0)
    const entries = readRootDirectory(image)
    expect(entries.map((entry) => entry.name)).toEqual(['\0', '\u0001', 'META-DATA.;1', 'NETWORK-CONFIG.;1', 'USER-DATA.;1'])
    const content = (name: string) => {
      const entry = entries.find((candidate) => candidate.name === name)!
      return image.subarray(entry.sector * 2048, entry.sector * 2048 + entry.size)
    }
    expect(content('USER-DATA.;1').toString()).toBe('#cloud-config\nusers: []\n')
    expect(content('META-DATA.;1').toString()).toBe('instance-id: abc\n')
    expect(content('NETWORK-CONFIG.;1').equals(big)).toBe(true)
    // The volume size in the descriptor covers the whole image.
    expect(image.readUInt32LE(16 * 2048 + 80) * 2048).toBe(image.length)
  })

  test('refuses names and labels it cannot store', () => {
    expect(() => makeIso9660Image('cidata', [{ name: 'User Data', data: '' }])).toThrow(/invalid seed file name/)
    expect(() => makeIso9660Image('ci data', [])).toThrow(/invalid ISO 9660 volume label/)
  })
})
