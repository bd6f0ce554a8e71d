import { createHash, randomBytes } from 'node:crypto'
import { constants, createReadStream } from 'node:fs'
import { access, chmod, copyFile, mkdir, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import lockfile from 'proper-lockfile'
import { VmPoolError } from '../../errors.js'
import { runProcess } from '../../transport/process-runner.js'
import { quoteShellArg } from '../../transport/shell.js'
import { generateSshKeyPair } from '../../transport/ssh-keys.js'
import { writeFileAtomic } from '../../util/fs-atomic.js'
import { DEFAULT_IMAGE_NAME, IMAGE_MANIFEST_FILE, imageManifestSchema, type ImageManifest } from './qemu-image.js'

/** Bump when the image layout or guest init changes: cached images with another version are rebuilt. */
export const MINIMAL_IMAGE_RECIPE_VERSION = 2
/** How long one `apt-get download` / `dpkg-deb` / `cpio` step may take. */
export const IMAGE_STEP_TIMEOUT_MS = 300_000
/** How long a build waits for another process building the same image. */
export const IMAGE_BUILD_LOCK_WAIT_MS = 600_000

/** The kernel metapackage whose dependency names the concrete kernel package. */
const KERNEL_METAPACKAGE = 'linux-image-amd64'
/** Modules the guest loads, dependencies first; the builder adds what their `depends=` name. */
const GUEST_MODULES = ['virtio_pci', 'virtio_net']
/** Printed by the guest's rcS right before dropbear starts. */
const GUEST_BOOT_MARKER = 'vm-pool: guest network up'
const GUEST_KERNEL_APPEND = 'console=ttyS0 quiet panic=-1'

/** Host programs the build runs, with the Debian package that provides each. */
const HOST_TOOLS: Array<{ path: string; pkg: string }> = [
  { path: '/usr/bin/apt-get', pkg: 'apt' },
  { path: '/usr/bin/apt-cache', pkg: 'apt' },
  { path: '/usr/bin/dpkg-deb', pkg: 'dpkg' },
  { path: '/usr/bin/cpio', pkg: 'cpio' },
  { path: '/usr/bin/gzip', pkg: 'gzip' },
  { path: '/usr/bin/ldd', pkg: 'libc-bin' },
  { path: '/bin/busybox', pkg: 'busybox-static' },
  { path: '/usr/sbin/dropbear', pkg: 'dropbear-bin' },
  { path: '/usr/bin/dropbearkey', pkg: 'dropbear-bin' },
]

export interface BuildImageOptions {
  imageDir: string
  /** Rebuild even when the cached image is up to date. */
  force?: boolean
  /** Progress lines (the CLI prints them on stderr). */
  log?: (line: string) => void
  signal?: AbortSignal
}

export interface BuildImageResult {
  dir: string
  /** True when the cached image was up to date and nothing was built. */
  reused: boolean
  manifest: ImageManifest
  durationMs: number
}

/**
 * Build the default "minimal" guest image into `<imageDir>/minimal/`: the Debian kernel (its .deb
 * downloaded and unpacked, never installed), an initramfs with busybox, dropbear and the virtio
 * network modules, a client key pair the guest trusts and a guest host key the host pins.
 * Idempotent: an up-to-date image is reused; concurrent builds wait for each other (a lock file).
 */
export async function buildMinimalImage(options: BuildImageOptions): Promise<BuildImageResult> {
  const started = performance.now()
  const log = options.log ?? (() => {})
  const dir = join(options.imageDir, DEFAULT_IMAGE_NAME)
  await checkHostTools()
  const inputs = await getInputsHash()

  await mkdir(options.imageDir, { recursive: true, mode: 0o700 })
  const release = await lockfile.lock(options.imageDir, {
    lockfilePath: join(options.imageDir, `${DEFAULT_IMAGE_NAME}.build.lock`),
    stale: 30_000,
    retries: { retries: Math.ceil(IMAGE_BUILD_LOCK_WAIT_MS / 1_000), minTimeout: 1_000, maxTimeout: 1_000, factor: 1 },
  })
  try {
    if (!options.force) {
      const cached = await readCachedManifest(dir)
      if (cached && cached.recipeVersion === MINIMAL_IMAGE_RECIPE_VERSION && cached.build.inputs === inputs) {
        log(`image ${DEFAULT_IMAGE_NAME} is up to date in ${dir} (built ${cached.createdAt ?? 'earlier'}; --force rebuilds)`)
        return { dir, reused: true, manifest: cached, durationMs: Math.round(performance.now() - started) }
      }
      if (cached) log(`image ${DEFAULT_IMAGE_NAME} in ${dir} is outdated: rebuilding`)
    }
    const work = join(options.imageDir, `.build-${process.pid}-${randomBytes(4).toString('hex')}`)
    try {
      const manifest = await buildInto(work, inputs, log, options.signal)
      // Swap the finished image in: a reader sees the old image or the new one, never half of one.
      const old = join(options.imageDir, `.old-${process.pid}-${randomBytes(4).toString('hex')}`)
      await rename(dir, old).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'ENOENT') throw error
      })
      await rename(join(work, 'image'), dir)
      await rm(old, { recursive: true, force: true })
      log(`image ${DEFAULT_IMAGE_NAME} built in ${dir} (${Math.round((performance.now() - started) / 100) / 10} s)`)
      return { dir, reused: false, manifest, durationMs: Math.round(performance.now() - started) }
    } finally {
      await rm(work, { recursive: true, force: true })
    }
  } finally {
    await release()
  }
}

async function readCachedManifest(dir: string): Promise<ImageManifest | undefined> {
  try {
    const manifest = imageManifestSchema.parse(JSON.parse(await readFile(join(dir, IMAGE_MANIFEST_FILE), 'utf8')))
    for (const file of [manifest.kernel, manifest.initrd, manifest.clientKey]) {
      if (file) await access(join(dir, file), constants.R_OK)
    }
    return manifest
  } catch {
    return undefined
  }
}

export async function checkHostTools(): Promise<void> {
  const missing: Array<{ path: string; pkg: string }> = []
  for (const tool of HOST_TOOLS) {
    try {
      await access(tool.path, constants.X_OK)
    } catch {
      missing.push(tool)
    }
  }
  if (missing.length === 0) return
  const packages = [...new Set(missing.map((tool) => tool.pkg))]
  throw new VmPoolError({
    code: 'VMPOOL_IMAGE_BUILD_FAILED',
    provider: 'qemu',
    operation: 'image build',
    message: `missing host tools: ${missing.map((tool) => `${tool.path} (Debian package ${tool.pkg})`).join(', ')}`,
    hint: `install them: sudo apt-get install ${packages.join(' ')}`,
    details: { missing: missing.map((tool) => tool.path), packages },
  })
}

/** What the image is made of on this host: a changed busybox or dropbear makes the cached image outdated. */
async function getInputsHash(): Promise<string> {
  const hash = createHash('sha256').update(`recipe ${MINIMAL_IMAGE_RECIPE_VERSION}\n${GUEST_MODULES.join(',')}\n${GUEST_KERNEL_APPEND}\n`)
  for (const file of ['/bin/busybox', '/usr/sbin/dropbear']) {
    for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer)
  }
  return hash.digest('hex').slice(0, 16)
}

async function run(file: string, args: string[], options: { cwd?: string; signal?: AbortSignal; what: string; hint?: string }): Promise<string> {
  const result = await runProcess(file, args, { cwd: options.cwd, env: { ...process.env, LC_ALL: 'C' }, timeoutMs: IMAGE_STEP_TIMEOUT_MS, signal: options.signal, provider: 'qemu' })
  if (result.exitCode !== 0) {
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

async function buildInto(work: string, inputs: string, log: (line: string) => void, signal: AbortSignal | undefined): Promise<ImageManifest> {
  const image = join(work, 'image')
  const root = join(work, 'root')
  const deb = join(work, 'deb')
  await mkdir(image, { recursive: true, mode: 0o700 })
  await mkdir(deb, { recursive: true })

  log(`resolving the kernel package (${KERNEL_METAPACKAGE})`)
  const depends = await run('/usr/bin/apt-cache', ['depends', KERNEL_METAPACKAGE], { signal, what: `apt-cache depends ${KERNEL_METAPACKAGE}`, hint: `run \`sudo apt-get update\` (the package lists may be missing); the image needs Debian's ${KERNEL_METAPACKAGE} package, which Ubuntu does not have: on Ubuntu, point the provider at your own kernel + initrd (docs/qemu.md)` })
  const kernelPackage = /Depends:\s*(linux-image-[0-9][^\s]*)/.exec(depends)?.[1]
  if (!kernelPackage) {
    throw new VmPoolError({ code: 'VMPOOL_IMAGE_BUILD_FAILED', provider: 'qemu', operation: 'image build', message: `could not find the kernel package ${KERNEL_METAPACKAGE} depends on`, hint: `run \`sudo apt-get update\`; this needs Debian apt sources (${KERNEL_METAPACKAGE}); elsewhere, point the provider at your own kernel + initrd (docs/qemu.md)`, details: { output: depends.slice(0, 500) } })
  }
  log(`downloading ${kernelPackage} (apt-get download; nothing is installed)`)
  await run('/usr/bin/apt-get', ['download', '-q', kernelPackage], { cwd: deb, signal, what: `apt-get download ${kernelPackage}`, hint: 'check network access to the Debian mirror, or run `sudo apt-get update`' })
  const debFile = (await readdir(deb)).find((file) => file.endsWith('.deb'))
  if (!debFile) throw new VmPoolError({ code: 'VMPOOL_IMAGE_BUILD_FAILED', provider: 'qemu', operation: 'image build', message: `apt-get download ${kernelPackage} produced no .deb file` })
  log(`unpacking ${debFile}`)
  const unpacked = join(work, 'kernel')
  await run('/usr/bin/dpkg-deb', ['-x', join(deb, debFile), unpacked], { signal, what: `dpkg-deb -x ${debFile}` })
  const vmlinuz = (await readdir(join(unpacked, 'boot'))).find((file) => file.startsWith('vmlinuz-'))
  if (!vmlinuz) throw new VmPoolError({ code: 'VMPOOL_IMAGE_BUILD_FAILED', provider: 'qemu', operation: 'image build', message: `${debFile} contains no /boot/vmlinuz-*` })
  const kernelVersion = vmlinuz.slice('vmlinuz-'.length)
  await copyFile(join(unpacked, 'boot', vmlinuz), join(image, 'vmlinuz'))

  log('assembling the initramfs: busybox, dropbear, virtio modules')
  for (const sub of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc/init.d', 'etc/dropbear', 'lib/modules/vm-pool', 'proc', 'sys', 'dev', 'run', 'tmp', 'var', 'root/.ssh']) {
    await mkdir(join(root, sub), { recursive: true })
  }
  await symlink('../run', join(root, 'var/run'))
  await chmod(join(root, 'tmp'), 0o1777)
  await chmod(join(root, 'root'), 0o700)
  await chmod(join(root, 'root/.ssh'), 0o700)
  await copyWithLibraries('/bin/busybox', join(root, 'bin/busybox'), root)
  await symlink('busybox', join(root, 'bin/sh'))
  await copyWithLibraries('/usr/sbin/dropbear', join(root, 'usr/sbin/dropbear'), root)
  const modules = await collectModules(join(unpacked, 'lib/modules', kernelVersion), GUEST_MODULES)
  for (const module of modules) await copyModule(module.path, join(root, 'lib/modules/vm-pool', `${module.name}.ko`), signal)
  await writeFile(join(root, 'lib/modules/vm-pool/order'), `${modules.map((module) => module.name).join('\n')}\n`)

  log('generating the guest host key and the client key pair')
  const hostKeyPath = join(root, 'etc/dropbear/dropbear_ed25519_host_key')
  await run('/usr/bin/dropbearkey', ['-t', 'ed25519', '-f', hostKeyPath], { signal, what: 'dropbearkey (guest host key)' })
  const hostKey = (await run('/usr/bin/dropbearkey', ['-y', '-f', hostKeyPath], { signal, what: 'dropbearkey -y' })).split('\n').find((line) => line.startsWith('ssh-ed25519 '))
  if (!hostKey) throw new VmPoolError({ code: 'VMPOOL_IMAGE_BUILD_FAILED', provider: 'qemu', operation: 'image build', message: 'dropbearkey -y printed no ssh-ed25519 public key line' })
  const client = generateSshKeyPair('vm-pool-minimal-image')
  await writeFileAtomic(join(image, 'client_key'), client.privateKey, 0o600)
  await writeFile(join(image, 'client_key.pub'), `${client.publicKey}\n`)
  await writeFile(join(root, 'root/.ssh/authorized_keys'), `${client.publicKey}\n`, { mode: 0o600 })
  await writeGuestConfig(root)

  log('packing the initramfs (cpio + gzip)')
  // The initramfs holds the guest's host private key: keep it private to this user.
  await run('/bin/sh', ['-c', `find . -print0 | cpio --null -o -H newc -R 0:0 --quiet | gzip -6 > ${quoteShellArg(join(image, 'initrd.img'))}`], { cwd: root, signal, what: 'packing the initramfs' })
  await chmod(join(image, 'initrd.img'), 0o600)

  const manifest: ImageManifest = {
    recipeVersion: MINIMAL_IMAGE_RECIPE_VERSION,
    name: DEFAULT_IMAGE_NAME,
    kernel: 'vmlinuz',
    initrd: 'initrd.img',
    append: GUEST_KERNEL_APPEND,
    diskFormat: 'qcow2',
    hostKey: hostKey.split(/\s+/).slice(0, 2).join(' '),
    clientKey: 'client_key',
    username: 'root',
    bootMarker: GUEST_BOOT_MARKER,
    minMemoryMiB: 128,
    build: { inputs, kernelPackage, kernelVersion, modules: modules.map((module) => module.name).join(',') },
    createdAt: new Date().toISOString(),
  }
  await writeFileAtomic(join(image, IMAGE_MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`, 0o644)
  return manifest
}

/** Copy a binary and every shared library `ldd` names to the same paths under `root` (nothing for a static binary). */
async function copyWithLibraries(source: string, target: string, root: string): Promise<void> {
  await copyFile(source, target)
  await chmod(target, 0o755)
  const result = await runProcess('/usr/bin/ldd', [source], { timeoutMs: IMAGE_STEP_TIMEOUT_MS })
  if (result.exitCode !== 0) return // "not a dynamic executable"
  for (const line of result.stdout.split('\n')) {
    const path = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line)?.[1]
    if (!path) continue
    await mkdir(join(root, dirname(path)), { recursive: true })
    await copyFile(path, join(root, path))
  }
}

interface KernelModule {
  name: string
  path: string
}

/** The wanted modules plus their `depends=` closure, dependencies first (the order insmod needs). */
async function collectModules(modulesDir: string, wanted: string[]): Promise<KernelModule[]> {
  const files = new Map<string, string>()
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name)
      if (entry.isDirectory()) await walk(path)
      else if (/\.ko(\.xz|\.zst)?$/.test(entry.name)) files.set(entry.name.replace(/\.ko(\.xz|\.zst)?$/, '').replaceAll('-', '_'), path)
    }
  }
  await walk(join(modulesDir, 'kernel'))
  const builtin = new Set(
    (await readFile(join(modulesDir, 'modules.builtin'), 'utf8').catch(() => ''))
      .split('\n')
      .map((line) => basename(line).replace(/\.ko$/, '').replaceAll('-', '_')),
  )
  const ordered: KernelModule[] = []
  const visiting = new Set<string>()
  const visit = async (name: string): Promise<void> => {
    if (visiting.has(name) || ordered.some((module) => module.name === name) || builtin.has(name)) return
    const path = files.get(name)
    if (!path) throw new VmPoolError({ code: 'VMPOOL_IMAGE_BUILD_FAILED', provider: 'qemu', operation: 'image build', message: `kernel module ${name} is neither in ${modulesDir} nor built in` })
    visiting.add(name)
    for (const dependency of await readModuleDepends(path)) await visit(dependency)
    ordered.push({ name, path })
  }
  for (const name of wanted) await visit(name)
  return ordered
}

/** The `depends=a,b` string in a module's .modinfo section (no modinfo binary needed). */
async function readModuleDepends(path: string): Promise<string[]> {
  const bytes = path.endsWith('.ko') ? await readFile(path) : Buffer.from((await runProcess(path.endsWith('.xz') ? 'xz' : 'zstd', ['-dc', path], { timeoutMs: IMAGE_STEP_TIMEOUT_MS })).stdout, 'latin1')
  const at = bytes.indexOf('\0depends=')
  if (at < 0) return []
  const end = bytes.indexOf(0, at + 1)
  return bytes
    .subarray(at + '\0depends='.length, end)
    .toString('latin1')
    .split(',')
    .map((name) => name.trim().replaceAll('-', '_'))
    .filter(Boolean)
}

async function copyModule(source: string, target: string, signal: AbortSignal | undefined): Promise<void> {
  if (source.endsWith('.ko')) return copyFile(source, target)
  // Busybox insmod reads plain .ko files only.
  const tool = source.endsWith('.xz') ? 'xz' : 'zstd'
  await run('/bin/sh', ['-c', `${tool} -dc ${quoteShellArg(source)} > ${quoteShellArg(target)}`], { signal, what: `decompressing ${basename(source)}`, hint: `install ${tool === 'xz' ? 'xz-utils' : 'zstd'}` })
}

/** /init, inittab and friends: busybox init keeps dropbear running and reaps orphans. */
async function writeGuestConfig(root: string): Promise<void> {
  const files: Record<string, string> = {
    init: `#!/bin/sh
# PID 1 of the vm-pool minimal guest: mount the basics, then hand over to busybox init.
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
exec </dev/console >/dev/console 2>&1
echo "vm-pool: guest init"
exec /bin/busybox init
`,
    'etc/inittab': `::sysinit:/etc/init.d/rcS
::respawn:/usr/sbin/dropbear -F -E -s -p 22 -P /run/dropbear.pid -r /etc/dropbear/dropbear_ed25519_host_key
::ctrlaltdel:/bin/busybox reboot -f
`,
    'etc/init.d/rcS': `#!/bin/sh
# virtio modules in dependency order (the list was computed from their depends= at build time).
for module in $(cat /lib/modules/vm-pool/order); do
  insmod /lib/modules/vm-pool/$module.ko || echo "vm-pool: insmod $module failed"
done
hostname vm-pool
ip link set lo up
# QEMU user-mode networking: the guest is 10.0.2.15, the gateway 10.0.2.2, DNS 10.0.2.3.
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 || echo "vm-pool: no network"
echo "${GUEST_BOOT_MARKER}, starting dropbear"
`,
    'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\n',
    'etc/shadow': 'root:*:19000:0:99999:7:::\n',
    'etc/group': 'root:x:0:\n',
    'etc/shells': '/bin/sh\n',
    'etc/hosts': '127.0.0.1 localhost vm-pool\n',
    'etc/resolv.conf': 'nameserver 10.0.2.3\n',
    'etc/profile': 'export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n',
  }
  for (const [path, text] of Object.entries(files)) {
    await writeFile(join(root, path), text, { mode: path === 'init' || path.startsWith('etc/init.d/') ? 0o755 : path === 'etc/shadow' ? 0o600 : 0o644 })
  }
}
