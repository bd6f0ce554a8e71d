import { createHash } from 'node:crypto'
import { chmod, copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { VmPoolError, invalidOptions } from '../../../errors.js'
import { runProcess } from '../../../transport/process-runner.js'
import { quoteShellArg } from '../../../transport/shell.js'
import { generateSshKeyPair } from '../../../transport/ssh-keys.js'
import { writeFileAtomic } from '../../../util/fs-atomic.js'
import { scaleTimeout } from '../../../util/timeouts.js'
import { VM_NAME_PATTERN } from '../../../util/vm-name.js'
import { DEFAULT_IMAGE_NAME, IMAGE_MANIFEST_FILE, type ImageManifest } from '../qemu-image.js'
import { CLOUD_IMAGE_RECIPE_VERSION, finishCloudImage } from './cloud-image.js'
import { DEFAULT_DEBIAN_SUITE, getDebianSources, type DebianSource } from './debian-archive.js'
import { DEBIAN_BOOT_MARKER, DEBIAN_GUEST_USER, DEBIAN_KERNEL_APPEND, DEBIAN_SSH_MAX_SESSIONS, getDebianGuestFiles, getDebianSetupScript, type GuestFile } from './debian-guest-files.js'
import { requireHostTools } from './host-tools.js'
import { buildInImageSlot, type BuildImageOptions, type BuildImageResult } from './image-build-slot.js'

/** Bump when the recipe changes what it builds: cached images of another version are rebuilt. */
export const DEBIAN_IMAGE_RECIPE_VERSION = 1
export const DEBIAN_IMAGE_NAME = 'debian-12'
/** What every Debian image has (mmdebstrap `--variant=minbase` adds Debian's essential packages and apt). */
export const DEBIAN_BASE_PACKAGES = ['linux-image-amd64', 'systemd-sysv', 'udev', 'dbus', 'openssh-server', 'sudo', 'ca-certificates', 'libnss-myhostname', 'iproute2', 'procps']
/** mmdebstrap from the first download to the finished root: ~2 min on a quiet 2-core host, 20 min seen on an overloaded one. */
export const DEBIAN_BOOTSTRAP_TIMEOUT_MS = 45 * 60_000
/** mkfs.ext4 -d and qemu-img convert of a ~1 GB root. */
export const DEBIAN_DISK_STEP_TIMEOUT_MS = 10 * 60_000
/** Root (~0.7 GB) + the raw disk's used blocks + the qcow2 copy + the package cache, with room to spare. */
const DEBIAN_MIN_FREE_BYTES = 3_000_000_000
const GIB = 1024 ** 3
/** The smallest disk an image gets; VMs may ask for more (`diskGiB`), the guest grows its root to fill it. */
const MIN_DISK_BYTES = 2 * GIB
/** Free space the disk keeps beyond the root's files, so an image is usable with its own disk size. */
const DISK_HEADROOM_BYTES = 768 * 1024 ** 2
const PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]+$/

export interface BuildDebianImageOptions extends BuildImageOptions {
  /** The image's name under `imageDir`. @default 'debian-12' */
  name?: string
  /** Debian packages added to DEBIAN_BASE_PACKAGES. */
  packages?: string[]
  /** A script run as root inside the new system after the packages are installed (its shebang, else `sh`). */
  script?: string
  /**
   * A cloud-style image: cloud-init installed, no key baked in; the keys come from a NoCloud seed made
   * beside it, as `vm-pool image import` does for downloaded cloud images.
   */
  cloudInit?: boolean
}

/**
 * `vm-pool image build debian-12`: a Debian 12 system built with mmdebstrap from Debian's packages —
 * systemd, OpenSSH, sudo, a non-root user with passwordless sudo, DHCP with systemd-networkd — on an
 * ext4 disk that grows to the VM's disk at boot, booted with the kernel and initrd from the image (no
 * bootloader). Cached like the minimal image; `--force` rebuilds. Needs root (mmdebstrap's root mode).
 */
export async function buildDebianImage(options: BuildDebianImageOptions): Promise<BuildImageResult> {
  const log = options.log ?? (() => {})
  const name = options.name ?? DEBIAN_IMAGE_NAME
  if (!VM_NAME_PATTERN.test(name)) throw invalidOptions(`invalid image name ${JSON.stringify(name)}: use ${VM_NAME_PATTERN.source}`, { provider: 'qemu', operation: 'image build' })
  // The default image is what every VM without an `image` boots: a Debian system must not silently replace it.
  if (name === DEFAULT_IMAGE_NAME) throw invalidOptions(`--name ${name} is the default image (the minimal recipe's); pick another name`, { provider: 'qemu', operation: 'image build' })
  const extra = [...new Set(options.packages ?? [])].sort()
  const bad = extra.find((pkg) => !PACKAGE_NAME.test(pkg))
  if (bad !== undefined) throw invalidOptions(`invalid Debian package name ${JSON.stringify(bad)}`, { provider: 'qemu', operation: 'image build' })
  const script = options.script ? await readScript(options.script) : undefined
  const packages = [...DEBIAN_BASE_PACKAGES, ...(options.cloudInit ? ['cloud-init'] : []), ...extra]
  requireRoot(name)
  const tools = await requireHostTools(
    [
      { name: 'mmdebstrap', pkg: 'mmdebstrap' },
      { name: 'mkfs.ext4', pkg: 'e2fsprogs' },
      { name: 'qemu-img', pkg: 'qemu-utils' },
      { name: 'du', pkg: 'coreutils' },
    ] as const,
    `the ${name} image`,
  )
  const sources = getDebianSources({ mirror: options.mirror, scheme: 'http' })
  // What the recipe writes into the guest is part of the inputs: changing a unit or sshd setting rebuilds cached images.
  const sample = options.cloudInit ? {} : { clientPublicKey: 'client-key', hostKey: { privateKey: 'host-key', publicKey: 'host-key.pub' } }
  const recipe = JSON.stringify({ files: getDebianGuestFiles(sample), setup: getDebianSetupScript(sample), append: DEBIAN_KERNEL_APPEND })
  const inputs = createHash('sha256')
    .update(JSON.stringify({ recipe: DEBIAN_IMAGE_RECIPE_VERSION, guest: createHash('sha256').update(recipe).digest('hex'), sources, packages, cloudInit: options.cloudInit ? CLOUD_IMAGE_RECIPE_VERSION : false, script: script ? createHash('sha256').update(script.text).digest('hex') : null }))
    .digest('hex')
    .slice(0, 16)

  return buildInImageSlot({
    imageDir: options.imageDir,
    name,
    force: options.force,
    log,
    minFreeBytes: DEBIAN_MIN_FREE_BYTES,
    isUpToDate: (cached) => cached.recipeVersion === DEBIAN_IMAGE_RECIPE_VERSION && cached.build.inputs === inputs,
    build: async (work) => {
      const image = join(work, 'image')
      const root = join(work, 'root')
      const client = options.cloudInit ? undefined : generateSshKeyPair(`vm-pool-${name}`)
      const hostKey = options.cloudInit ? undefined : generateSshKeyPair('vm-pool-guest')
      const files = getDebianGuestFiles({ clientPublicKey: client?.publicKey, hostKey })
      await writeOverlay(join(work, 'overlay'), files.filter((file) => !file.afterPackages))
      await writeFile(join(work, 'setup.sh'), getDebianSetupScript({ clientPublicKey: client?.publicKey, hostKey }), { mode: 0o755 })
      if (script) await writeFile(join(work, 'user-script'), script.text, { mode: 0o755 })

      log(`bootstrapping Debian ${DEFAULT_DEBIAN_SUITE} (${sources.map((source) => `${source.mirror} ${source.suite}`).join(', ')}) with mmdebstrap (about 2 min on an idle 2-core host): ${packages.join(', ')}`)
      const started = performance.now()
      await runMmdebstrap(tools.mmdebstrap, { work, root, sources, packages, cacheDir: join(options.imageDir, '.debian-packages'), scriptPath: script?.path, log, signal: options.signal })
      const bootstrapMs = Math.round(performance.now() - started)
      await writeOverlay(root, files.filter((file) => file.afterPackages))

      const boot = await readdir(join(root, 'boot'))
      const vmlinuz = boot.find((file) => /^vmlinuz-/.test(file))
      const initrd = boot.find((file) => /^initrd\.img-[^/]*-amd64$/.test(file))
      if (!vmlinuz || !initrd) throw new VmPoolError({ code: 'VMPOOL_IMAGE_BUILD_FAILED', provider: 'qemu', operation: 'image build', message: `the bootstrapped system has no kernel or initramfs in /boot (found: ${boot.join(', ') || 'nothing'})` })
      await copyFile(join(root, 'boot', vmlinuz), join(image, 'vmlinuz'))
      await copyFile(join(root, 'boot', initrd), join(image, 'initrd.img'))
      const kernelVersion = vmlinuz.slice('vmlinuz-'.length)

      const diskBytes = await makeDisk({ root, image, work, tools, log, signal: options.signal })
      const build = { recipe: 'debian-12', inputs, suite: DEFAULT_DEBIAN_SUITE, kernelVersion, packages: packages.join(','), ...(script ? { script: script.path } : {}), bootstrapMs: String(bootstrapMs) }
      if (options.cloudInit) {
        return finishCloudImage(image, { name, kernel: 'vmlinuz', initrd: 'initrd.img', append: DEBIAN_KERNEL_APPEND, user: DEBIAN_GUEST_USER, diskVirtualBytes: diskBytes, build: { ...build, cloudInit: 'yes' } })
      }
      await writeFileAtomic(join(image, 'client_key'), client!.privateKey, 0o600)
      await writeFile(join(image, 'client_key.pub'), `${client!.publicKey}\n`)
      const manifest: ImageManifest = {
        recipeVersion: DEBIAN_IMAGE_RECIPE_VERSION,
        name,
        kind: 'debian',
        kernel: 'vmlinuz',
        initrd: 'initrd.img',
        append: DEBIAN_KERNEL_APPEND,
        disk: 'disk.qcow2',
        diskFormat: 'qcow2',
        diskVirtualBytes: diskBytes,
        growsRootFs: true,
        hostKey: hostKey!.publicKey.split(/\s+/).slice(0, 2).join(' '),
        clientKey: 'client_key',
        username: 'root',
        sudoUser: DEBIAN_GUEST_USER,
        sshMaxSessions: DEBIAN_SSH_MAX_SESSIONS,
        bootMarker: DEBIAN_BOOT_MARKER,
        minMemoryMiB: 256,
        build,
        createdAt: new Date().toISOString(),
      }
      await writeFileAtomic(join(image, IMAGE_MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`, 0o644)
      return manifest
    },
  })
}

function requireRoot(name: string): void {
  if (process.getuid?.() === 0) return
  throw new VmPoolError({
    code: 'VMPOOL_IMAGE_BUILD_FAILED',
    provider: 'qemu',
    operation: 'image build',
    message: `building the ${name} image needs root: mmdebstrap installs packages that create files owned by other users and runs their scripts in a chroot; unprivileged builds (mmdebstrap's unshare mode with /etc/subuid ranges, or fakechroot) are not supported`,
    hint: `run the build as root, e.g. sudo env "PATH=$PATH" npx vm-pool image build ${name}; the finished image is handed to the user sudo ran for (SUDO_UID), so VMs then boot without root`,
  })
}

async function readScript(path: string): Promise<{ path: string; text: string }> {
  const absolute = resolve(path)
  try {
    return { path: absolute, text: await readFile(absolute, 'utf8') }
  } catch (error) {
    throw invalidOptions(`--script ${path}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message}`, { provider: 'qemu', operation: 'image build', cause: error })
  }
}

async function writeOverlay(dir: string, files: GuestFile[]): Promise<void> {
  for (const file of files) {
    const path = join(dir, file.path)
    await mkdir(dirname(path), { recursive: true })
    // A symlink left there (resolv.conf often is one) must not redirect the write to the host.
    await rm(path, { force: true })
    await writeFile(path, file.text, { mode: file.mode })
    await chmod(path, file.mode)
  }
}

interface MmdebstrapOptions {
  work: string
  root: string
  sources: DebianSource[]
  packages: string[]
  /** Downloaded .debs kept between builds (`--force` rebuilds download nothing that did not change). */
  cacheDir: string
  scriptPath: string | undefined
  log: (line: string) => void
  signal: AbortSignal | undefined
}

async function runMmdebstrap(mmdebstrap: string, options: MmdebstrapOptions): Promise<void> {
  const { work, root, cacheDir } = options
  const q = quoteShellArg
  await mkdir(cacheDir, { recursive: true, mode: 0o700 })
  const freshCache = `${cacheDir}.${process.pid}.new`
  await rm(freshCache, { recursive: true, force: true })
  const hooks = [
    // Concurrent builds in one image dir may replace the cache meanwhile: a partial copy only costs downloads (apt checks each .deb's hash).
    `--setup-hook=mkdir -p "$1/var/cache/apt/archives" && cp -a ${q(cacheDir)}/. "$1/var/cache/apt/archives/" 2>/dev/null; true`,
    // Before the packages: the kernel package then builds the small initramfs, sshd keeps the pinned key.
    `--essential-hook=cp -a ${q(join(work, 'overlay'))}/. "$1/"`,
    // setup.sh runs in the chroot, so it must be inside the root.
    `--customize-hook=cp ${q(join(work, 'setup.sh'))} "$1/root/.vm-pool-setup.sh" && chroot "$1" /bin/sh /root/.vm-pool-setup.sh`,
  ]
  if (options.scriptPath) {
    await writeFile(join(work, 'run-user-script.sh'), getUserScriptRunner(work), { mode: 0o755 })
    hooks.push(`--customize-hook=/bin/sh ${q(join(work, 'run-user-script.sh'))} "$1"`)
  }
  hooks.push(
    `--customize-hook=rm -f "$1/root/.vm-pool-setup.sh" "$1"/boot/*.dpkg-bak "$1"/boot/*.new`,
    `--customize-hook=mkdir -p ${q(freshCache)} && cp -a "$1"/var/cache/apt/archives/*.deb ${q(freshCache)}/ 2>/dev/null; true`,
  )
  const args = [
    '--mode=root',
    '--variant=minbase',
    '--format=directory',
    `--include=${options.packages.join(',')}`,
    // No fsync per file while unpacking: the root becomes a disk image right after, nothing to protect.
    '--dpkgopt=force-unsafe-io',
    '--aptopt=Acquire::Languages "none"',
    '--skip=essential/unlink',
    ...hooks,
    DEFAULT_DEBIAN_SUITE,
    root,
    // Also the guest's /etc/apt/sources.list: apt-get in the VM sees the release, -updates and -security.
    ...options.sources.map((source) => `deb ${source.mirror} ${source.suite} main`),
  ]
  const stderrLines: string[] = []
  let partial = ''
  const onOutput = (chunk: string) => {
    partial += chunk
    const lines = partial.split('\n')
    partial = lines.pop() ?? ''
    for (const line of lines) {
      stderrLines.push(line)
      if (stderrLines.length > 200) stderrLines.shift()
      // apt's sandbox warning is about our 0700 image dir, not a problem: keep it out of the progress.
      if (/^(I: (running|downloading|extracting|installing)|E: |W: )/.test(line) && !line.includes('unsandboxed')) options.log(`mmdebstrap: ${line}`)
    }
  }
  const result = await runProcess(mmdebstrap, args, { env: { ...process.env, LC_ALL: 'C.UTF-8', DEBIAN_FRONTEND: 'noninteractive' }, timeoutMs: scaleTimeout(DEBIAN_BOOTSTRAP_TIMEOUT_MS), signal: options.signal, onStderr: onOutput, onStdout: onOutput, provider: 'qemu' })
  if (result.exitCode === 0) {
    // Keep exactly the packages this build used: the cache does not grow with every Debian point release.
    await rm(cacheDir, { recursive: true, force: true })
    await rename(freshCache, cacheDir).catch(() => rm(freshCache, { recursive: true, force: true }))
    return
  }
  await rm(freshCache, { recursive: true, force: true })
  const scriptStatus = await readFile(join(work, 'user-script.status'), 'utf8').catch(() => undefined)
  if (options.scriptPath && scriptStatus !== undefined && scriptStatus.trim() !== '0') {
    const output = (await readFile(join(work, 'user-script.log'), 'utf8').catch(() => '')).trimEnd().split('\n').slice(-40)
    throw new VmPoolError({
      code: 'VMPOOL_IMAGE_BUILD_FAILED',
      provider: 'qemu',
      operation: 'image build',
      message: `--script ${options.scriptPath} failed with exit code ${scriptStatus.trim()}; nothing was kept from this build. Its output${output.length >= 40 ? ' (last 40 lines)' : ''}:\n${output.map((line) => `  | ${line}`).join('\n')}`,
      hint: 'fix the script and build again (it runs as root in a chroot of the new system, after the packages are installed)',
      details: { script: options.scriptPath, exitCode: Number(scriptStatus.trim()) },
    })
  }
  throw new VmPoolError({
    code: 'VMPOOL_IMAGE_BUILD_FAILED',
    provider: 'qemu',
    operation: 'image build',
    message: `mmdebstrap exited with ${result.exitCode}${result.timedOut ? ' (DEBIAN_BOOTSTRAP_TIMEOUT_MS ran out)' : ''}; nothing was kept from this build. Its last lines:\n${[...stderrLines, partial].filter(Boolean).slice(-15).map((line) => `  | ${line}`).join('\n')}`,
    hint: 'check network access to the Debian mirror (VM_POOL_DEBIAN_MIRROR, VM_POOL_DEBIAN_SECURITY_MIRROR), the package names, and free space',
    details: { exitCode: result.exitCode, output: [...stderrLines, partial].slice(-15).join('\n') },
  })
}

/** Runs the user's script in the chroot; its output goes to the build log and to a file, its status to another. */
function getUserScriptRunner(work: string): string {
  const q = quoteShellArg
  return `#!/bin/sh
# vm-pool: run the user's --script as root in the new system ($1 is its root).
cp ${q(join(work, 'user-script'))} "$1/root/.vm-pool-user-script" && chmod 755 "$1/root/.vm-pool-user-script" || exit 1
if head -c 2 "$1/root/.vm-pool-user-script" | grep -q '^#!'; then set -- "$1" /root/.vm-pool-user-script; else set -- "$1" /bin/sh /root/.vm-pool-user-script; fi
{ chroot "$1" /usr/bin/env HOME=/root DEBIAN_FRONTEND=noninteractive "$2" $3 2>&1; echo $? > ${q(join(work, 'user-script.status'))}; } | tee ${q(join(work, 'user-script.log'))}
rm -f "$1/root/.vm-pool-user-script"
exit "$(cat ${q(join(work, 'user-script.status'))})"
`
}

async function makeDisk(options: { root: string; image: string; work: string; tools: Record<'mkfs.ext4' | 'qemu-img' | 'du', string>; log: (line: string) => void; signal: AbortSignal | undefined }): Promise<number> {
  const { root, image, work, tools, signal } = options
  const du = await runProcess(tools.du, ['-sb', '--one-file-system', root], { timeoutMs: scaleTimeout(DEBIAN_DISK_STEP_TIMEOUT_MS), env: process.env, signal })
  const used = Number(du.stdout.split(/\s/)[0])
  if (du.exitCode !== 0 || !Number.isFinite(used)) throw new VmPoolError({ code: 'VMPOOL_IMAGE_BUILD_FAILED', provider: 'qemu', operation: 'image build', message: `du -sb ${root} failed: ${du.stderr.trim()}` })
  const size = Math.max(MIN_DISK_BYTES, Math.ceil((used * 1.1 + DISK_HEADROOM_BYTES) / (256 * 1024 ** 2)) * 256 * 1024 ** 2)
  options.log(`making the disk: ext4 of ${(size / GIB).toFixed(2)} GiB from ${(used / 1e6).toFixed(0)} MB of files (mkfs.ext4 -d), then qcow2`)
  const raw = join(work, 'disk.raw')
  const step = async (file: string, args: string[], what: string) => {
    const result = await runProcess(file, args, { timeoutMs: scaleTimeout(DEBIAN_DISK_STEP_TIMEOUT_MS), env: { ...process.env, LC_ALL: 'C' }, signal })
    if (result.exitCode !== 0) throw new VmPoolError({ code: 'VMPOOL_IMAGE_BUILD_FAILED', provider: 'qemu', operation: 'image build', message: `${what} failed (exit ${result.exitCode}): ${result.stderr.trim().split('\n').slice(-3).join(' | ')}` })
  }
  await step(tools['mkfs.ext4'], ['-q', '-F', '-L', 'vm-pool-root', '-m', '0', '-d', root, raw, `${Math.round(size / 1024)}k`], 'mkfs.ext4 -d')
  // The disk holds the guest's host private key: private to this user, like client_key.
  await step(tools['qemu-img'], ['convert', '-O', 'qcow2', raw, join(image, 'disk.qcow2')], 'qemu-img convert')
  await chmod(join(image, 'disk.qcow2'), 0o600)
  await rm(raw, { force: true })
  return size
}
