import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { access, constants, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { gunzipSync } from 'node:zlib'
import type { Dispatcher } from 'undici'
import { VmPoolError } from '../../../errors.js'
import { runProcess } from '../../../transport/process-runner.js'
import { lazyModule } from '../../../util/lazy-module.js'
import { scaleTimeout } from '../../../util/timeouts.js'
import { compareDebianVersions } from './debian-version.js'
import { findOnPath, requireHostTools } from './host-tools.js'

const undici = lazyModule<typeof import('undici')>('undici')

/** Debian's CDN. HTTPS: the transport is authenticated even where no gpgv/keyring can check InRelease. */
export const DEFAULT_DEBIAN_MIRROR = 'https://deb.debian.org/debian'
export const DEFAULT_DEBIAN_SECURITY_MIRROR = 'https://deb.debian.org/debian-security'
export const DEFAULT_DEBIAN_SUITE = 'bookworm'
/** Where Debian (and Ubuntu's debian-archive-keyring package) put the archive's signing keys. */
export const DEBIAN_ARCHIVE_KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg'
/** One index or .deb download, from request to the last byte (the kernel .deb is ~70 MB). */
export const ARCHIVE_DOWNLOAD_TIMEOUT_MS = 600_000

/** One suite of one mirror (`deb MIRROR SUITE main` in sources.list terms). */
export interface DebianSource {
  mirror: string
  suite: string
}

/**
 * Debian 12 as apt on Debian sees it: the release, its point-release updates and its security
 * updates (the newest kernel is usually in bookworm-security). `VM_POOL_DEBIAN_MIRROR` replaces
 * deb.debian.org for the first two; `VM_POOL_DEBIAN_SECURITY_MIRROR` the security one (with a custom
 * main mirror and no security mirror given, security updates are left out: the mirror may be all
 * there is). `scheme: 'http'` is for apt (the Debian recipe and the guest's sources.list): apt
 * authenticates by signature, as Debian's own default `http://deb.debian.org` does, and plain HTTP
 * also works behind TLS-intercepting proxies whose CA only the host trusts (measured on this project's
 * CI machines: the guest's apt failed with "certificate issuer is unknown" over HTTPS).
 */
export function getDebianSources(options: { mirror?: string; env?: NodeJS.ProcessEnv; scheme?: 'https' | 'http' } = {}): DebianSource[] {
  const env = options.env ?? process.env
  const withScheme = (url: string) => (options.scheme === 'http' ? url.replace(/^https:/, 'http:') : url)
  const mirror = (options.mirror ?? env.VM_POOL_DEBIAN_MIRROR ?? withScheme(DEFAULT_DEBIAN_MIRROR)).replace(/\/+$/, '')
  const isDefault = mirror === withScheme(DEFAULT_DEBIAN_MIRROR)
  const security = env.VM_POOL_DEBIAN_SECURITY_MIRROR ?? (isDefault ? withScheme(DEFAULT_DEBIAN_SECURITY_MIRROR) : undefined)
  return [
    { mirror, suite: DEFAULT_DEBIAN_SUITE },
    { mirror, suite: `${DEFAULT_DEBIAN_SUITE}-updates` },
    ...(security ? [{ mirror: security.replace(/\/+$/, ''), suite: `${DEFAULT_DEBIAN_SUITE}-security` }] : []),
  ]
}

export interface DebianArchiveOptions {
  /** @default getDebianSources() */
  sources?: DebianSource[]
  /** An undici Dispatcher for every request (a proxy, a test agent). @default undici's global dispatcher */
  dispatcher?: Dispatcher
  /** OpenPGP keyring gpgv checks InRelease against. @default DEBIAN_ARCHIVE_KEYRING */
  keyring?: string
  log?: (line: string) => void
  signal?: AbortSignal
}

/** One binary package of the index: what to fetch and the digest it must have. */
export interface DebianPackage {
  name: string
  version: string
  /** The mirror whose index lists it: the file is fetched from there. */
  mirror: string
  /** Path under the mirror root (`pool/main/b/busybox/busybox-static_...deb`). */
  filename: string
  size: number
  sha256: string
  /** Raw `Depends` + `Pre-Depends`: `a (>= 1) | b, c`. */
  depends: string
}

export interface DebianArchive {
  /** `https://deb.debian.org/debian bookworm, ...`: for messages. */
  readonly description: string
  /** How InRelease was authenticated: `gpgv` (signature checked) or `https` (transport only). */
  readonly trust: 'gpgv' | 'https'
  /** The newest version of `name` in any of the sources. */
  get(name: string): DebianPackage | undefined
  /** The named packages and everything they depend on (first alternative; virtual names via Provides). */
  resolve(names: string[]): DebianPackage[]
  /** Download into `dir`, checking size and SHA256 against the index; a mismatch deletes the file and throws. */
  download(pkg: DebianPackage, dir: string): Promise<string>
}

/**
 * Debian's archive over HTTP(S) with undici, for hosts whose apt is not Debian's (Ubuntu, GitHub
 * runners) or that have no apt. The chain of trust is apt's: InRelease (signature checked with gpgv
 * when gpgv and the keyring exist; otherwise only over HTTPS) → SHA256 of the `Packages` index →
 * SHA256 of each `.deb`. Anything that does not match is refused with VMPOOL_IMAGE_BUILD_FAILED.
 */
export async function openDebianArchive(options: DebianArchiveOptions = {}): Promise<DebianArchive> {
  const sources = options.sources ?? getDebianSources()
  const byName = new Map<string, DebianPackage>()
  const providers = new Map<string, DebianPackage>()
  const trusts: Array<'gpgv' | 'https'> = []
  for (const source of sources) {
    const index = await readSourceIndex(source, options)
    trusts.push(index.trust)
    for (const pkg of index.packages) {
      const known = byName.get(pkg.name)
      if (!known || compareDebianVersions(pkg.version, known.version) > 0) byName.set(pkg.name, pkg)
    }
    for (const [name, pkg] of index.providers) if (!providers.has(name)) providers.set(name, pkg)
  }
  const description = sources.map((source) => `${source.mirror} ${source.suite}`).join(', ')
  return {
    description,
    trust: trusts.every((trust) => trust === 'gpgv') ? 'gpgv' : 'https',
    get: (name) => byName.get(name),
    resolve(names) {
      const wanted = new Map<string, DebianPackage>()
      const visit = (name: string, from: string | undefined): void => {
        const pkg = byName.get(name) ?? byName.get(providers.get(name)?.name ?? '')
        if (!pkg) throw archiveError(`package ${name}${from ? ` (needed by ${from})` : ''} is not in ${description}`, description)
        if (wanted.has(pkg.name)) return
        wanted.set(pkg.name, pkg)
        for (const dependency of parseDepends(pkg.depends)) visit(dependency, pkg.name)
      }
      for (const name of names) visit(name, undefined)
      return [...wanted.values()]
    },
    download: (pkg, dir) => downloadPackage(pkg, dir, options),
  }
}

/** A suite's InRelease (authenticated) and its main/binary-amd64 index (checked against it). */
async function readSourceIndex(source: DebianSource, options: DebianArchiveOptions): Promise<{ trust: 'gpgv' | 'https'; packages: DebianPackage[]; providers: Map<string, DebianPackage> }> {
  const { mirror, suite } = source
  const log = options.log ?? (() => {})
  const inRelease = await fetchBytes(`${mirror}/dists/${suite}/InRelease`, options)
  const trust = await checkInRelease(inRelease, mirror, options.keyring ?? DEBIAN_ARCHIVE_KEYRING, options.signal)
  const release = inRelease.toString('utf8')
  // The release suite serves Packages.gz; -updates and -security only Packages.xz (the plain file is listed, not served).
  const gz = findReleaseDigest(release, 'main/binary-amd64/Packages.gz')
  const indexPath = gz ? 'main/binary-amd64/Packages.gz' : 'main/binary-amd64/Packages.xz'
  const expected = gz ?? findReleaseDigest(release, indexPath)
  if (!expected) throw archiveError(`${mirror}/dists/${suite}/InRelease lists no SHA256 for main/binary-amd64/Packages.gz or .xz`, mirror)
  const bytes = await fetchBytes(`${mirror}/dists/${suite}/${indexPath}`, options)
  checkDigest(bytes, expected, `${mirror}/dists/${suite}/${indexPath}`)
  const parsed = parsePackagesIndex(gz ? gunzipSync(bytes).toString('utf8') : await unxz(bytes, `${mirror}/dists/${suite}/${indexPath}`, options.signal), mirror)
  log(`${mirror} ${suite}: InRelease ${trust === 'gpgv' ? 'signature verified with gpgv' : 'trusted through HTTPS only (gpgv or the Debian archive keyring is missing)'}, ${parsed.packages.length} packages (index SHA256 checked against InRelease)`)
  return { trust, ...parsed }
}

async function unxz(bytes: Buffer, url: string, signal: AbortSignal | undefined): Promise<string> {
  const { xz } = await requireHostTools([{ name: 'xz', pkg: 'xz-utils' }] as const, `reading ${url}`)
  const result = await runProcess(xz, ['-dc'], { input: bytes, timeoutMs: scaleTimeout(120_000), env: process.env, signal })
  if (result.exitCode !== 0) throw archiveError(`xz could not decompress ${url}: ${result.stderr.trim()}`, url)
  return result.stdout
}

async function downloadPackage(pkg: DebianPackage, dir: string, options: DebianArchiveOptions): Promise<string> {
  const target = join(dir, basename(pkg.filename))
  const url = `${pkg.mirror}/${pkg.filename}`
  const hash = createHash('sha256')
  let size = 0
  const response = await send(url, options)
  try {
    await pipeline(
      response.body,
      new Transform({
        transform(chunk: Buffer, _encoding, done) {
          hash.update(chunk)
          size += chunk.length
          done(null, chunk)
        },
      }),
      createWriteStream(target, { mode: 0o644 }),
    )
  } catch (error) {
    await rm(target, { force: true })
    throw archiveError(`downloading ${url} failed: ${(error as Error).message}`, pkg.mirror, error)
  }
  const digest = hash.digest('hex')
  if (size !== pkg.size || digest !== pkg.sha256) {
    await rm(target, { force: true })
    throw archiveError(`${url} does not match the archive's Packages index (SHA256 ${digest}, ${size} bytes; the index says ${pkg.sha256}, ${pkg.size} bytes): refused`, pkg.mirror, undefined, { package: pkg.name, url })
  }
  return target
}

/** Package names a `Depends` line needs: the first alternative of each clause, versions dropped. */
export function parseDepends(depends: string): string[] {
  return depends
    .split(',')
    .map((clause) => clause.split('|')[0]!.trim().replace(/\s*\(.*\)$/, '').replace(/:any$/, ''))
    .filter(Boolean)
}

function parsePackagesIndex(text: string, mirror: string): { packages: DebianPackage[]; providers: Map<string, DebianPackage> } {
  const packages: DebianPackage[] = []
  const providers = new Map<string, DebianPackage>()
  for (const stanza of text.split(/\n\n+/)) {
    const fields = new Map<string, string>()
    let last = ''
    for (const line of stanza.split('\n')) {
      if (line.startsWith(' ') && last) fields.set(last, `${fields.get(last)}\n${line}`)
      else {
        const colon = line.indexOf(':')
        if (colon <= 0) continue
        last = line.slice(0, colon)
        fields.set(last, line.slice(colon + 1).trim())
      }
    }
    const name = fields.get('Package')
    const filename = fields.get('Filename')
    const sha256 = fields.get('SHA256')
    if (!name || !filename || !sha256) continue
    const pkg: DebianPackage = {
      name,
      version: fields.get('Version') ?? '',
      mirror,
      filename,
      size: Number(fields.get('Size') ?? 0),
      sha256,
      depends: [fields.get('Pre-Depends'), fields.get('Depends')].filter(Boolean).join(', '),
    }
    packages.push(pkg)
    for (const provided of parseDepends(fields.get('Provides') ?? '')) if (!providers.has(provided)) providers.set(provided, pkg)
  }
  return { packages, providers }
}

/** The `SHA256:` section line of a Release file for `path`. */
function findReleaseDigest(release: string, path: string): { sha256: string; size: number } | undefined {
  const section = /^SHA256:\n((?: .*\n?)+)/m.exec(release)?.[1] ?? ''
  for (const line of section.split('\n')) {
    const [sha256, size, name] = line.trim().split(/\s+/)
    if (name === path && sha256 && size) return { sha256, size: Number(size) }
  }
  return undefined
}

function checkDigest(bytes: Buffer, expected: { sha256: string; size: number }, url: string): void {
  const digest = createHash('sha256').update(bytes).digest('hex')
  if (digest !== expected.sha256 || bytes.length !== expected.size) {
    throw archiveError(`${url} does not match InRelease (SHA256 ${digest}, ${bytes.length} bytes; InRelease says ${expected.sha256}, ${expected.size} bytes): refused`, url)
  }
}

/** gpgv against the keyring when both exist; a bad signature is refused, never downgraded to HTTPS trust. */
async function checkInRelease(inRelease: Buffer, mirror: string, keyring: string, signal: AbortSignal | undefined): Promise<'gpgv' | 'https'> {
  const gpgv = await findOnPath('gpgv')
  const haveKeyring = await access(keyring, constants.R_OK).then(() => true, () => false)
  if (!gpgv || !haveKeyring) {
    if (!mirror.startsWith('https://')) {
      throw archiveError(`cannot authenticate ${mirror}: it is not HTTPS and ${gpgv ? `the keyring ${keyring} is missing` : 'gpgv is not installed'}`, mirror, undefined, undefined, 'use an https:// mirror, or install gpgv and debian-archive-keyring')
    }
    return 'https'
  }
  const dir = await mkdtemp(join(tmpdir(), 'vmp-inrelease-'))
  try {
    await writeFile(join(dir, 'InRelease'), inRelease)
    const result = await runProcess(gpgv, ['--keyring', keyring, join(dir, 'InRelease')], { timeoutMs: scaleTimeout(30_000), env: { ...process.env, LC_ALL: 'C' }, signal })
    if (result.exitCode !== 0) {
      throw archiveError(`the InRelease signature of ${mirror} does not verify against ${keyring}: ${result.stderr.trim().split('\n').slice(-2).join(' | ')}`, mirror)
    }
    return 'gpgv'
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

async function send(url: string, options: DebianArchiveOptions): Promise<Dispatcher.ResponseData> {
  let response: Dispatcher.ResponseData
  try {
    response = await undici().request(url, {
      dispatcher: options.dispatcher,
      signal: options.signal,
      headersTimeout: scaleTimeout(60_000),
      bodyTimeout: scaleTimeout(ARCHIVE_DOWNLOAD_TIMEOUT_MS),
    })
  } catch (error) {
    throw archiveError(`GET ${url} failed: ${(error as Error).message}`, url, error, undefined, 'check network access to the Debian mirror (or set VM_POOL_DEBIAN_MIRROR)')
  }
  if (response.statusCode !== 200) {
    await response.body.dump()
    throw archiveError(`GET ${url} answered HTTP ${response.statusCode}`, url)
  }
  return response
}

async function fetchBytes(url: string, options: DebianArchiveOptions): Promise<Buffer> {
  const response = await send(url, options)
  return Buffer.from(await response.body.arrayBuffer())
}

function archiveError(message: string, where: string, cause?: unknown, details?: Record<string, string>, hint?: string): VmPoolError {
  return new VmPoolError({ code: 'VMPOOL_IMAGE_BUILD_FAILED', provider: 'qemu', operation: 'image build', message: `Debian archive: ${message}`, hint: hint ?? `mirror: ${where}`, details, cause })
}
