import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { chmod, copyFile, mkdir, readdir } from 'node:fs/promises'
import { dirname, join, relative } from 'node:path'
import type { Dispatcher } from 'undici'
import { VmPoolError } from '../../../errors.js'
import { runProcess } from '../../../transport/process-runner.js'
import { scaleTimeout } from '../../../util/timeouts.js'
import { getDebianSources, openDebianArchive } from './debian-archive.js'
import { extractDeb } from './deb-file.js'
import { findOnPath, requireHostTools } from './host-tools.js'

/** How long one `apt-get download` / unpack / `cpio` step may take. */
export const IMAGE_STEP_TIMEOUT_MS = 300_000

/** The kernel metapackage whose dependency names the concrete kernel package. */
const KERNEL_METAPACKAGE = 'linux-image-amd64'
const MULTIARCH_LIB_DIRS = ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu']

/**
 * Where the minimal image's kernel, busybox and dropbear come from. `apt`: this host's apt (a
 * Debian host: `apt-get download` of the kernel, the host's own busybox-static and dropbear-bin).
 * `debian-archive`: every .deb straight from Debian's archive over HTTPS, SHA256-checked (Ubuntu,
 * other distros, no apt at all). `auto` picks `apt` only when the host's apt has Debian's kernel and
 * busybox + dropbear are installed.
 */
export type DebSourceChoice = 'auto' | 'apt' | 'debian-archive'
export type DebSource = Exclude<DebSourceChoice, 'auto'>

export interface MinimalImageParts {
  source: DebSource
  kernelPackage: string
  kernelVersion: string
  /** The unpacked kernel package: `boot/vmlinuz-<version>`, `lib/modules/<version>/`. */
  kernelTree: string
  /** A static busybox. */
  busybox: string
  /** Copy dropbear and every library it needs to the same paths under `root`. */
  installDropbear(root: string): Promise<void>
  /** Run dropbearkey with these arguments; its stdout. */
  runDropbearkey(args: string[]): Promise<string>
}

export interface MinimalPartsOptions {
  work: string
  log: (line: string) => void
  signal?: AbortSignal
  mirror?: string
  dispatcher?: Dispatcher
}

/** `auto` resolved, with the reason (shown in the build log). */
export async function chooseDebSource(choice: DebSourceChoice, signal?: AbortSignal): Promise<{ source: DebSource; reason: string }> {
  if (choice !== 'auto') return { source: choice, reason: `--source ${choice}` }
  for (const tool of ['apt-get', 'apt-cache', 'busybox', 'dropbear', 'dropbearkey', 'ldd']) {
    if (!(await findOnPath(tool))) return { source: 'debian-archive', reason: `${tool} is not on PATH` }
  }
  const policy = await runProcess((await findOnPath('apt-cache'))!, ['policy', KERNEL_METAPACKAGE], { timeoutMs: scaleTimeout(60_000), env: { ...process.env, LC_ALL: 'C' }, signal })
  const candidate = /Candidate:\s*(\S+)/.exec(policy.stdout)?.[1]
  if (policy.exitCode !== 0 || !candidate || candidate === '(none)') return { source: 'debian-archive', reason: `this host's apt has no ${KERNEL_METAPACKAGE} (not Debian's apt, or no package lists)` }
  return { source: 'apt', reason: `this host's apt has ${KERNEL_METAPACKAGE} ${candidate}` }
}

/** What makes a cached image outdated: for `apt` the host's busybox and dropbear binaries, for the archive the suite. */
export async function getPartsInputs(source: DebSource, base: string): Promise<string> {
  const hash = createHash('sha256').update(base)
  if (source === 'apt') {
    for (const tool of ['busybox', 'dropbear']) {
      for await (const chunk of createReadStream((await findOnPath(tool))!)) hash.update(chunk as Buffer)
    }
  } else {
    hash.update(`debian-archive ${getDebianSources().map((source) => source.suite).join(' ')}\n`)
  }
  return hash.digest('hex').slice(0, 16)
}

export async function fetchMinimalImageParts(source: DebSource, options: MinimalPartsOptions): Promise<MinimalImageParts> {
  return source === 'apt' ? fetchFromHostApt(options) : fetchFromArchive(options)
}

async function fetchFromHostApt(options: MinimalPartsOptions): Promise<MinimalImageParts> {
  const tools = await requireHostTools(
    [
      { name: 'apt-get', pkg: 'apt' },
      { name: 'apt-cache', pkg: 'apt' },
      { name: 'ldd', pkg: 'libc-bin' },
      { name: 'busybox', pkg: 'busybox-static' },
      { name: 'dropbear', pkg: 'dropbear-bin' },
      { name: 'dropbearkey', pkg: 'dropbear-bin' },
    ] as const,
    'the minimal image (apt source)',
  )
  const { work, log, signal } = options
  log(`resolving the kernel package (${KERNEL_METAPACKAGE})`)
  const depends = await run(tools['apt-cache'], ['depends', KERNEL_METAPACKAGE], { signal, what: `apt-cache depends ${KERNEL_METAPACKAGE}`, hint: 'run `sudo apt-get update` (the package lists may be missing), or build with --source debian-archive' })
  const kernelPackage = /Depends:\s*(linux-image-[0-9][^\s]*)/.exec(depends)?.[1]
  if (!kernelPackage) throw buildError(`could not find the kernel package ${KERNEL_METAPACKAGE} depends on`, 'run `sudo apt-get update`, or build with --source debian-archive (fetches from Debian directly)')
  const debs = join(work, 'deb')
  await mkdir(debs, { recursive: true })
  log(`downloading ${kernelPackage} (apt-get download; nothing is installed)`)
  await run(tools['apt-get'], ['download', '-q', kernelPackage], { cwd: debs, signal, what: `apt-get download ${kernelPackage}`, hint: 'check network access to the Debian mirror, or run `sudo apt-get update`' })
  const debFile = (await readdir(debs)).find((file) => file.endsWith('.deb'))
  if (!debFile) throw buildError(`apt-get download ${kernelPackage} produced no .deb file`)
  const { kernelTree, kernelVersion } = await unpackKernel(join(debs, debFile), work, log, signal)
  return {
    source: 'apt',
    kernelPackage,
    kernelVersion,
    kernelTree,
    busybox: tools.busybox,
    installDropbear: (root) => copyWithLibraries(tools.dropbear, join(root, 'usr/sbin/dropbear'), root, (binary) => run(tools.ldd, [binary], { signal, what: `ldd ${binary}`, allowFailure: true })),
    runDropbearkey: (args) => run(tools.dropbearkey, args, { signal, what: 'dropbearkey' }),
  }
}

async function fetchFromArchive(options: MinimalPartsOptions): Promise<MinimalImageParts> {
  const { work, log, signal } = options
  await requireHostTools([{ name: 'tar', pkg: 'tar' }, { name: 'xz', pkg: 'xz-utils' }] as const, 'the minimal image (debian-archive source)')
  const archive = await openDebianArchive({ sources: getDebianSources({ mirror: options.mirror }), dispatcher: options.dispatcher, log, signal })
  const meta = archive.get(KERNEL_METAPACKAGE)
  const kernelPackage = meta && /(?:^|,\s*)(linux-image-[0-9][^\s,(]*)/.exec(meta.depends)?.[1]
  const kernel = kernelPackage ? archive.get(kernelPackage) : undefined
  if (!kernel || !kernelPackage) throw buildError(`${archive.description} has no ${KERNEL_METAPACKAGE} that names a kernel package`)
  // The kernel alone (its Depends are for installing it, not for booting it); dropbear with its libraries.
  const userland = [archive.get('busybox-static'), ...archive.resolve(['dropbear-bin'])].filter((pkg) => pkg !== undefined)
  if (!userland.some((pkg) => pkg.name === 'busybox-static')) throw buildError(`${archive.description} has no busybox-static`)
  const debs = join(work, 'deb')
  const sysroot = join(work, 'sysroot')
  await mkdir(debs, { recursive: true })
  log(`downloading ${[kernel, ...userland].map((pkg) => `${pkg.name} ${pkg.version}`).join(', ')} (SHA256 checked against the Packages index)`)
  const kernelDeb = await archive.download(kernel, debs)
  for (const pkg of userland) await extractDeb(await archive.download(pkg, debs), sysroot, signal)
  const { kernelTree, kernelVersion } = await unpackKernel(kernelDeb, work, log, signal)

  // Debian's own loader lists and runs Debian's dropbear on any x86-64 Linux: no host ldd, no host libraries.
  const libraryPath = MULTIARCH_LIB_DIRS.map((dir) => join(sysroot, dir)).join(':')
  const loader = join(sysroot, 'lib/x86_64-linux-gnu/ld-linux-x86-64.so.2')
  const underLoader = (binary: string, args: string[], what: string, allowFailure = false) => run(loader, ['--library-path', libraryPath, binary, ...args], { signal, what, allowFailure })
  return {
    source: 'debian-archive',
    kernelPackage,
    kernelVersion,
    kernelTree,
    busybox: join(sysroot, 'bin/busybox'),
    async installDropbear(root) {
      await copyWithLibraries(join(sysroot, 'usr/sbin/dropbear'), join(root, 'usr/sbin/dropbear'), root, (binary) => run(loader, ['--library-path', libraryPath, '--list', binary], { signal, what: `ld.so --list ${binary}` }), sysroot)
      // The program interpreter the binary names (PT_INTERP): Debian's loader, at /lib64.
      await mkdir(join(root, 'lib64'), { recursive: true })
      await copyFile(loader, join(root, 'lib64/ld-linux-x86-64.so.2'))
    },
    runDropbearkey: (args) => underLoader(join(sysroot, 'usr/bin/dropbearkey'), args, 'dropbearkey'),
  }
}

async function unpackKernel(deb: string, work: string, log: (line: string) => void, signal: AbortSignal | undefined): Promise<{ kernelTree: string; kernelVersion: string }> {
  log(`unpacking ${deb.split('/').pop()}`)
  const kernelTree = join(work, 'kernel')
  await extractDeb(deb, kernelTree, signal)
  const vmlinuz = (await readdir(join(kernelTree, 'boot'))).find((file) => file.startsWith('vmlinuz-'))
  if (!vmlinuz) throw buildError(`${deb} contains no /boot/vmlinuz-*`)
  return { kernelTree, kernelVersion: vmlinuz.slice('vmlinuz-'.length) }
}

/**
 * Copy a binary and every shared library `listLibraries` names (ldd output format) to the same paths
 * under `root`. With a `sysroot`, paths inside it are mapped back to their place in the guest.
 */
async function copyWithLibraries(source: string, target: string, root: string, listLibraries: (binary: string) => Promise<string>, sysroot?: string): Promise<void> {
  await mkdir(dirname(target), { recursive: true })
  await copyFile(source, target)
  await chmod(target, 0o755)
  for (const line of (await listLibraries(source)).split('\n')) {
    const path = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line)?.[1]
    if (!path) continue
    const guestPath = sysroot && path.startsWith(`${sysroot}/`) ? `/${relative(sysroot, path)}` : path
    if (sysroot && guestPath === path) continue // the interpreter line: installDropbear places Debian's loader itself
    await mkdir(join(root, dirname(guestPath)), { recursive: true })
    await copyFile(path, join(root, guestPath))
  }
}

export async function run(file: string, args: string[], options: { cwd?: string; signal?: AbortSignal; what: string; hint?: string; allowFailure?: boolean }): Promise<string> {
  const result = await runProcess(file, args, { cwd: options.cwd, env: { ...process.env, LC_ALL: 'C' }, timeoutMs: scaleTimeout(IMAGE_STEP_TIMEOUT_MS), signal: options.signal, provider: 'qemu' })
  if (result.exitCode !== 0 && !options.allowFailure) {
    throw new VmPoolError({
      code: 'VMPOOL_IMAGE_BUILD_FAILED',
      provider: 'qemu',
      operation: 'image build',
      message: `${options.what} failed (${file} ${args.join(' ')} exited with ${result.exitCode}${result.timedOut ? ', timed out (IMAGE_STEP_TIMEOUT_MS)' : ''}): ${result.stderr.trim().split('\n').slice(-5).join(' | ')}`,
      hint: options.hint,
    })
  }
  return result.stdout
}

export function buildError(message: string, hint?: string): VmPoolError {
  return new VmPoolError({ code: 'VMPOOL_IMAGE_BUILD_FAILED', provider: 'qemu', operation: 'image build', message, hint })
}
