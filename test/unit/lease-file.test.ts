/**
 * The lease file's text (src/pool/lease-file.ts): a checksum first, so a reader tells a whole table from a
 * torn one (pool/file-lease-store.ts writes it in place). Table-driven over the ways a write can tear.
 */
import { describe, expect, test } from 'vitest'
import { decodeLeaseFile, encodeLeaseFile, serializeLeases } from '../../src/pool/lease-file.js'
import type { LeaseTable } from '../../src/pool/lease-store.js'
import { makeEntry as entry } from '../contract/lease-store-contract.js'

const at = '2026-11-27T10:00:00.000Z'

function table(count: number, state: 'idle' | 'leased' = 'idle'): LeaseTable {
  const result: LeaseTable = {}
  for (let i = 0; i < count; i++) result[`vm-${i}`] = entry(`vm-${i}`, { state, createdAt: at, updatedAt: at })
  return result
}

describe('lease file text', () => {
  test('round trip; the text is JSON with version, provider and leases, the checksum its first member', () => {
    const leases = table(3)
    const text = encodeLeaseFile('fake', serializeLeases(leases))
    const lines = text.split('\n')
    expect(lines[0]).toMatch(/^\{"checksum":"sha1:[0-9a-f]{40}",$/)
    // One line per lease.
    expect(lines.filter((line) => line.startsWith('"vm-'))).toHaveLength(3)
    expect(JSON.parse(text)).toMatchObject({ version: 1, provider: 'fake', leases })
    // The leases' text as read is what the writer would write for that table: an update that changes nothing writes nothing.
    expect(decodeLeaseFile(text)).toEqual({ kind: 'table', table: leases, checksum: expect.any(String), leasesText: serializeLeases(leases) })
    expect(serializeLeases({})).toBe('{}')
    expect(decodeLeaseFile(encodeLeaseFile('fake', '{}'))).toMatchObject({ kind: 'table', table: {} })
  })

  test('trailing spaces (padding after a shrink) are not part of the text', () => {
    const text = encodeLeaseFile('fake', serializeLeases(table(2)))
    expect(decodeLeaseFile(`${text}${' '.repeat(900)}`)).toMatchObject({ kind: 'table', table: table(2) })
  })

  // The new text is the shorter one, so a file not yet truncated after it ends in old bytes.
  const old = encodeLeaseFile('fake', serializeLeases(table(100, 'leased')))
  const next = encodeLeaseFile('fake', serializeLeases(table(100, 'idle')))
  const page = 4_096
  test.each([
    ['cut off after the first page', next.slice(0, page)],
    ['first page new, the rest old', next.slice(0, page) + old.slice(page)],
    ['new text, the old tail not yet truncated', next + old.slice(next.length)],
    ['pages mixed (new, old, new)', next.slice(0, page) + old.slice(page, 2 * page) + next.slice(2 * page)],
    ['one byte changed', next.replace('"idle"', '"idly"')],
  ])('torn: %s', (_label, text) => {
    expect(next.length).toBeGreaterThan(3 * page)
    expect(old.length).toBeGreaterThan(next.length)
    expect(decodeLeaseFile(text)).toEqual({ kind: 'torn', checksum: /"sha1:([0-9a-f]{40})"/.exec(next)![1] })
  })

  test('a file without the checksum line (an earlier vm-pool, or edited by hand) is checked against the schema', () => {
    const legacy = JSON.stringify({ version: 1, provider: 'fake', leases: table(2) }, null, 2)
    expect(decodeLeaseFile(legacy)).toMatchObject({ kind: 'table', table: table(2) })
    expect(decodeLeaseFile(JSON.stringify({ version: 1, provider: 'fake', leases: { a: { name: 'a', state: 'exploded' } } }))).toEqual({ kind: 'corrupt' })
    expect(decodeLeaseFile('{"version": 1, "leases": {')).toEqual({ kind: 'corrupt' })
  })
})
