/**
 * The .deb fetcher against Debian's real archive (HTTPS, InRelease checked with gpgv; bookworm,
 * -updates and -security merged by version), and against a
 * local HTTP mirror on 127.0.0.1:0 that serves Debian's real, signed indexes next to tampered files:
 * a tampered .deb, Packages.gz or InRelease is refused, and no refused file is left behind.
 */
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { extractDeb } from '../../src/providers/qemu/images/deb-file.js'
import { DEBIAN_ARCHIVE_KEYRING, DEFAULT_DEBIAN_MIRROR, openDebianArchive, parseDepends, type DebianArchive } from '../../src/providers/qemu/images/debian-archive.js'
import { compareDebianVersions } from '../../src/providers/qemu/images/debian-version.js'
import { findOnPath } from '../../src/providers/qemu/images/host-tools.js'

const scratch = mkdtempSync(join(tmpdir(), 'vmp-archive-'))
afterAll(() => rmSync(scratch, { recursive: true, force: true }))

/** gpgv and Debian's keyring: the local plain-HTTP mirror is only trusted through a verified InRelease. */
const canVerify = Boolean(await findOnPath('gpgv')) && existsSync(DEBIAN_ARCHIVE_KEYRING)
if (!canVerify && process.env.CI === 'true') throw new Error(`CI must check InRelease signatures: install gpgv and debian-archive-keyring (${DEBIAN_ARCHIVE_KEYRING})`)
if (!canVerify) console.warn(`skipping the tampered-mirror tests: gpgv or ${DEBIAN_ARCHIVE_KEYRING} is missing`)

let real: DebianArchive
beforeAll(async () => {
  real = await openDebianArchive()
}, 180_000)

describe("Debian's archive (deb.debian.org)", () => {
  test('InRelease is authenticated, the index resolves dependencies, a download matches its SHA256 and unpacks', async () => {
    expect(real.description).toBe(`${DEFAULT_DEBIAN_MIRROR} bookworm, ${DEFAULT_DEBIAN_MIRROR} bookworm-updates, https://deb.debian.org/debian-security bookworm-security`)
    expect(real.trust).toBe(canVerify ? 'gpgv' : 'https')
    // The newest of each package across the suites: a kernel security update beats the release's kernel.
    const releaseOnly = await openDebianArchive({ sources: [{ mirror: DEFAULT_DEBIAN_MIRROR, suite: 'bookworm' }] })
    expect(compareDebianVersions(real.get('linux-image-amd64')!.version, releaseOnly.get('linux-image-amd64')!.version)).toBeGreaterThanOrEqual(0)
    const closure = real.resolve(['dropbear-bin']).map((pkg) => pkg.name)
    expect(closure).toEqual(expect.arrayContaining(['dropbear-bin', 'libc6', 'zlib1g', 'libtomcrypt1']))
    const busybox = real.get('busybox-static')!
    const file = await real.download(busybox, scratch)
    expect(createHash('sha256').update(readFileSync(file)).digest('hex')).toBe(busybox.sha256)
    await extractDeb(file, join(scratch, 'real'))
    expect(existsSync(join(scratch, 'real/bin/busybox'))).toBe(true)
  }, 180_000)

  test('parseDepends keeps the first alternative and drops versions and :any', () => {
    expect(parseDepends('libc6 (>= 2.34), libcrypt1 (>= 1:4.1.0) | libxcrypt, perl:any')).toEqual(['libc6', 'libcrypt1', 'perl'])
  })
})

describe('a local mirror serving tampered files (HTTP on 127.0.0.1:0)', () => {
  let server: Server
  let mirror: string
  const files = new Map<string, Buffer>()
  beforeAll(async () => {
    // Debian's real, signed indexes: only the files below are tampered with.
    for (const path of ['dists/bookworm/InRelease', 'dists/bookworm/main/binary-amd64/Packages.gz']) {
      const response = await request(`${DEFAULT_DEBIAN_MIRROR}/${path}`)
      files.set(`/${path}`, Buffer.from(await response.body.arrayBuffer()))
    }
    server = createServer((req, res) => {
      const body = files.get(req.url ?? '')
      res.writeHead(body ? 200 : 404).end(body)
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const address = server.address() as { port: number }
    mirror = `http://127.0.0.1:${address.port}`
    if (!canVerify) return
    // Debian's real .deb with one byte flipped, where the (genuine) index says the file is.
    const busybox = (await openDebianArchive({ sources: [{ mirror, suite: 'bookworm' }] })).get('busybox-static')!
    const response = await request(`${DEFAULT_DEBIAN_MIRROR}/${busybox.filename}`)
    const tampered = Buffer.from(await response.body.arrayBuffer())
    tampered.writeUInt8(tampered.readUInt8(tampered.length - 100) ^ 0xff, tampered.length - 100)
    files.set(`/${busybox.filename}`, tampered)
  }, 180_000)
  afterAll(() => new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve())))

  test.skipIf(!canVerify)('a .deb that does not match the Packages index is refused and deleted', async () => {
    const archive = await openDebianArchive({ sources: [{ mirror, suite: 'bookworm' }] })
    expect(archive.trust).toBe('gpgv')
    const dir = join(scratch, 'tampered')
    mkdirSync(dir)
    const error = await archive.download(archive.get('busybox-static')!, dir).then(
      () => undefined,
      (caught: unknown) => caught,
    )
    expect(isVmPoolError(error, 'VMPOOL_IMAGE_BUILD_FAILED')).toBe(true)
    expect((error as Error).message).toMatch(/busybox-static_.*\.deb does not match the archive's Packages index \(SHA256 [0-9a-f]{64}.*refused/)
    expect(readdirSync(dir)).toEqual([])
  }, 180_000)

  test.skipIf(!canVerify)('a Packages.gz that does not match InRelease is refused', async () => {
    const original = files.get('/dists/bookworm/main/binary-amd64/Packages.gz')!
    files.set('/dists/bookworm/main/binary-amd64/Packages.gz', Buffer.concat([original.subarray(0, original.length - 1), Buffer.from([original.at(-1)! ^ 1])]))
    try {
      await expect(openDebianArchive({ sources: [{ mirror, suite: 'bookworm' }] })).rejects.toThrow(/Packages\.gz does not match InRelease .*refused/)
    } finally {
      files.set('/dists/bookworm/main/binary-amd64/Packages.gz', original)
    }
  }, 180_000)

  test.skipIf(!canVerify)('an InRelease whose signature does not verify is refused', async () => {
    const original = files.get('/dists/bookworm/InRelease')!
    files.set('/dists/bookworm/InRelease', Buffer.from(original.toString('utf8').replace('Origin: Debian', 'Origin: Debiam')))
    try {
      await expect(openDebianArchive({ sources: [{ mirror, suite: 'bookworm' }] })).rejects.toThrow(/InRelease signature of http:\/\/127\.0\.0\.1:\d+ does not verify/)
    } finally {
      files.set('/dists/bookworm/InRelease', original)
    }
  }, 180_000)

  test('a plain-HTTP mirror is refused when nothing can check its signature (no keyring)', async () => {
    await expect(openDebianArchive({ sources: [{ mirror, suite: 'bookworm' }], keyring: join(scratch, 'no-such-keyring.gpg') })).rejects.toThrow(/cannot authenticate http:\/\/127\.0\.0\.1:\d+: it is not HTTPS and (the keyring .*no-such-keyring\.gpg is missing|gpgv is not installed)/)
  })
})
