import { hash } from 'node:crypto'
import { LEASE_FILE_VERSION, leaseFileSchema, type LeaseTable } from './lease-store.js'

/**
 * The lease file's text. It is overwritten in place (util/in-place-file.ts), so its first member is a
 * checksum of the rest: a reader can tell a whole table from a torn one (a writer SIGKILLed mid-write, or a
 * reader without the lock that caught a write half-way). The writer first writes the same text to the copy
 * beside it (`<file>.wal`); a torn file whose checksum is the copy's was cut off writing that copy's text,
 * so the copy is the table (file-lease-store.ts).
 *
 * One line per lease, so `cat` and `diff` stay readable (`jq . FILE` pretty-prints it). The leases' text is
 * what the writer compares to decide whether anything changed, so it is built once per update
 * (`serializeLeases`) and, for a file of this format, taken from the file as it was read.
 *
 * A file without the checksum line (written by an earlier vm-pool, or edited by hand with the line removed)
 * is read as before: parsed and checked against the schema.
 */
const HEAD = '{"checksum":"sha1:'
const SUM_LENGTH = 40
const HEAD_END = '",\n'
const LEASES_KEY = ',"leases":'

export type DecodedLeaseFile =
  /** `leasesText`: `serializeLeases(table)` as the file holds it (only for a file of this format). */
  | { kind: 'table'; table: LeaseTable; checksum?: string; leasesText?: string }
  /** Has a checksum line that does not match the text: torn, or edited by hand without removing the line. */
  | { kind: 'torn'; checksum: string }
  | { kind: 'corrupt' }

/** The table's text in the file, one lease per line: also what an update compares before and after. */
export function serializeLeases(table: LeaseTable): string {
  const lines = Object.entries(table).map(([name, entry]) => `\n${JSON.stringify(name)}:${JSON.stringify(entry)}`)
  return lines.length === 0 ? '{}' : `{${lines.join(',')}\n}`
}

export function encodeLeaseFile(provider: string, leasesText: string): string {
  const body = `{"version":${LEASE_FILE_VERSION},"provider":${JSON.stringify(provider)}${LEASES_KEY}${leasesText}}`
  // The checksum becomes the body's first member, over the body as it was.
  return `${HEAD}${hash('sha1', body)}${HEAD_END}${body.slice(1)}\n`
}

export function decodeLeaseFile(text: string): DecodedLeaseFile {
  if (text.startsWith(HEAD) && text.startsWith(HEAD_END, HEAD.length + SUM_LENGTH)) {
    const checksum = text.slice(HEAD.length, HEAD.length + SUM_LENGTH)
    // Trailing spaces are padding from a shrink (in-place-file.ts).
    const body = `{${text.slice(HEAD.length + SUM_LENGTH + HEAD_END.length).trimEnd()}`
    if (hash('sha1', body) !== checksum) return { kind: 'torn', checksum }
    // Whole, and written by this format's writer from a table that was checked when it was read: the schema
    // check (a large part of a lease update's CPU) is not repeated.
    try {
      const file = JSON.parse(body) as { version?: unknown; leases?: unknown }
      const at = body.indexOf(LEASES_KEY)
      if (file.version === LEASE_FILE_VERSION && typeof file.leases === 'object' && file.leases !== null && at !== -1) {
        return { kind: 'table', table: file.leases as LeaseTable, checksum, leasesText: body.slice(at + LEASES_KEY.length, -1) }
      }
    } catch {
      // fall through: not ours after all
    }
    return { kind: 'corrupt' }
  }
  try {
    const parsed = leaseFileSchema.safeParse(JSON.parse(text))
    return parsed.success ? { kind: 'table', table: parsed.data.leases } : { kind: 'corrupt' }
  } catch {
    return { kind: 'corrupt' }
  }
}
