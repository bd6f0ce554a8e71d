import { createReadStream, createWriteStream } from 'node:fs'
import { mkdir, open, rm } from 'node:fs/promises'
import { basename } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { VmPoolError } from '../../../errors.js'
import { runProcess } from '../../../transport/process-runner.js'
import { scaleTimeout } from '../../../util/timeouts.js'
import { requireHostTools } from './host-tools.js'

/** How long unpacking one .deb may take (the kernel's data.tar.xz is ~70 MB). */
export const DEB_EXTRACT_TIMEOUT_MS = 300_000

const AR_MAGIC = '!<arch>\n'
const AR_HEADER_BYTES = 60

/**
 * `dpkg-deb -x` without dpkg: a .deb is an `ar` archive whose `data.tar.{xz,zst,gz}` member holds the
 * files. The member is cut out here and unpacked with the host's `tar` (GNU tar picks xz/zstd/gzip
 * from the data), so the only host tools are tar and its decompressor.
 */
export async function extractDeb(deb: string, dest: string, signal?: AbortSignal): Promise<void> {
  const member = await findDataMember(deb)
  const decompressor = member.name.endsWith('.xz') ? [{ name: 'xz', pkg: 'xz-utils' }] : member.name.endsWith('.zst') ? [{ name: 'zstd', pkg: 'zstd' }] : []
  const tools = await requireHostTools([{ name: 'tar', pkg: 'tar' }, ...decompressor], `unpacking ${basename(deb)}`)
  const tar = tools.tar!
  await mkdir(dest, { recursive: true })
  const temp = `${dest}.${member.name}`
  try {
    await pipeline(createReadStream(deb, { start: member.offset, end: member.offset + member.size - 1 }), createWriteStream(temp))
    // No owners from the archive: the files are for an image, not for this host's users.
    const result = await runProcess(tar, ['-x', '--no-same-owner', '-f', temp, '-C', dest], { timeoutMs: scaleTimeout(DEB_EXTRACT_TIMEOUT_MS), env: { ...process.env, LC_ALL: 'C' }, signal })
    if (result.exitCode !== 0) throw debError(`tar could not unpack ${member.name} of ${basename(deb)}: ${result.stderr.trim().split('\n').slice(-3).join(' | ')}`)
  } finally {
    await rm(temp, { force: true })
  }
}

async function findDataMember(deb: string): Promise<{ name: string; offset: number; size: number }> {
  const handle = await open(deb, 'r')
  try {
    const { size: fileSize } = await handle.stat()
    const magic = Buffer.alloc(AR_MAGIC.length)
    await handle.read(magic, 0, magic.length, 0)
    if (magic.toString('latin1') !== AR_MAGIC) throw debError(`${basename(deb)} is not a Debian package (no ar header)`)
    let offset = AR_MAGIC.length
    const header = Buffer.alloc(AR_HEADER_BYTES)
    while (offset + AR_HEADER_BYTES <= fileSize) {
      await handle.read(header, 0, AR_HEADER_BYTES, offset)
      const name = header.subarray(0, 16).toString('latin1').trim().replace(/\/$/, '')
      const size = Number(header.subarray(48, 58).toString('latin1').trim())
      if (header.subarray(58, 60).toString('latin1') !== '`\n' || !Number.isInteger(size)) throw debError(`${basename(deb)} has a corrupt ar member header at byte ${offset}`)
      offset += AR_HEADER_BYTES
      if (name.startsWith('data.tar')) return { name, offset, size }
      offset += size + (size % 2)
    }
    throw debError(`${basename(deb)} has no data.tar member`)
  } finally {
    await handle.close()
  }
}

function debError(message: string): VmPoolError {
  return new VmPoolError({ code: 'VMPOOL_IMAGE_BUILD_FAILED', provider: 'qemu', operation: 'image build', message })
}

