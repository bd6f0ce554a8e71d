import { execFile } from 'node:child_process'
import { chmod, copyFile, mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { promisify } from 'node:util'
import { quoteShellArg } from '../../transport/shell.js'
import { generateSshKeyPair } from '../../transport/ssh-keys.js'
import { writeFileAtomic } from '../../util/fs-atomic.js'
import { buildInImageSlot, type BuildImageOptions, type BuildImageResult } from './images/image-build-slot.js'
import { requireHostTools } from './images/host-tools.js'
import { buildError, chooseDebSource, fetchMinimalImageParts, getPartsInputs, run } from './images/minimal-image-parts.js'
import { DEFAULT_IMAGE_NAME, IMAGE_MANIFEST_FILE, type ImageManifest } from './qemu-image.js'

export { IMAGE_BUILD_LOCK_WAIT_MS, type BuildImageOptions, type BuildImageResult } from './images/image-build-slot.js'
export { IMAGE_STEP_TIMEOUT_MS } from './images/minimal-image-parts.js'

/** Bump when the image layout or guest init changes: cached images with another version are rebuilt. */
export const MINIMAL_IMAGE_RECIPE_VERSION = 2
/** The build's peak use of the image dir's file system is about 500 MB (the unpacked kernel package). */
const MINIMAL_MIN_FREE_BYTES = 200_000_000

const execFileAsync = promisify(execFile)

/** Modules the guest loads, dependencies first; the builder adds what their `depends=` name. */
const GUEST_MODULES = ['virtio_pci', 'virtio_net']
/** Printed by the guest's rcS right before dropbear starts. */
const GUEST_BOOT_MARKER = 'vm-pool: guest network up'
const GUEST_KERNEL_APPEND = 'console=ttyS0 quiet panic=-1'

/**
 * Build the default "minimal" guest image into `<imageDir>/minimal/`: the Debian kernel (its .deb
 * downloaded and unpacked, never installed), an initramfs with busybox, dropbear and the virtio
 * network modules, a client key pair the guest trusts and a guest host key the host pins.
 * Idempotent: an up-to-date image is reused; concurrent builds wait for each other (a lock file).
 */
export async function buildMinimalImage(options: BuildImageOptions): Promise<BuildImageResult> {
  const log = options.log ?? (() => {})
  const { source, reason } = await chooseDebSource(options.source ?? 'auto', options.signal)
  await requireHostTools([{ name: 'cpio', pkg: 'cpio' }, { name: 'gzip', pkg: 'gzip' }] as const, 'the minimal image')
  const inputs = await getPartsInputs(source, `recipe ${MINIMAL_IMAGE_RECIPE_VERSION}\n${GUEST_MODULES.join(',')}\n${GUEST_KERNEL_APPEND}\n`)
  return buildInImageSlot({
    imageDir: options.imageDir,
    name: DEFAULT_IMAGE_NAME,
    force: options.force,
    log,
    minFreeBytes: MINIMAL_MIN_FREE_BYTES,
    isUpToDate: (cached) => cached.recipeVersion === MINIMAL_IMAGE_RECIPE_VERSION && cached.build.inputs === inputs,
    build: async (work) => {
      log(`Debian packages from ${source === 'apt' ? "this host's apt" : "Debian's archive"} (${reason})`)
      return buildInto(work, inputs, source, options, log)
    },
  })
}

async function buildInto(work: string, inputs: string, source: 'apt' | 'debian-archive', options: BuildImageOptions, log: (line: string) => void): Promise<ImageManifest> {
  const { signal } = options
  const image = join(work, 'image')
  const root = join(work, 'root')
  const parts = await fetchMinimalImageParts(source, { work, log, signal, mirror: options.mirror, dispatcher: options.dispatcher })
  const { kernelTree, kernelVersion } = parts
  await copyFile(join(kernelTree, 'boot', `vmlinuz-${kernelVersion}`), join(image, 'vmlinuz'))

  log('assembling the initramfs: busybox, dropbear, virtio modules')
  for (const sub of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc/init.d', 'etc/dropbear', 'lib/modules/vm-pool', 'proc', 'sys', 'dev', 'run', 'tmp', 'var', 'root/.ssh']) {
    await mkdir(join(root, sub), { recursive: true })
  }
  await symlink('../run', join(root, 'var/run'))
  await chmod(join(root, 'tmp'), 0o1777)
  await chmod(join(root, 'root'), 0o700)
  await chmod(join(root, 'root/.ssh'), 0o700)
  await copyFile(parts.busybox, join(root, 'bin/busybox'))
  await chmod(join(root, 'bin/busybox'), 0o755)
  await symlink('busybox', join(root, 'bin/sh'))
  await parts.installDropbear(root)
  const modules = await collectModules(join(kernelTree, 'lib/modules', kernelVersion), GUEST_MODULES)
  for (const module of modules) await copyModule(module.path, join(root, 'lib/modules/vm-pool', `${module.name}.ko`), signal)
  await writeFile(join(root, 'lib/modules/vm-pool/order'), `${modules.map((module) => module.name).join('\n')}\n`)

  log('generating the guest host key and the client key pair')
  const hostKeyPath = join(root, 'etc/dropbear/dropbear_ed25519_host_key')
  await parts.runDropbearkey(['-t', 'ed25519', '-f', hostKeyPath])
  const hostKey = (await parts.runDropbearkey(['-y', '-f', hostKeyPath])).split('\n').find((line) => line.startsWith('ssh-ed25519 '))
  if (!hostKey) throw buildError('dropbearkey -y printed no ssh-ed25519 public key line')
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
    kind: 'minimal',
    kernel: 'vmlinuz',
    initrd: 'initrd.img',
    append: GUEST_KERNEL_APPEND,
    diskFormat: 'qcow2',
    hostKey: hostKey.split(/\s+/).slice(0, 2).join(' '),
    clientKey: 'client_key',
    username: 'root',
    bootMarker: GUEST_BOOT_MARKER,
    minMemoryMiB: 128,
    build: { inputs, source, kernelPackage: parts.kernelPackage, kernelVersion, modules: modules.map((module) => module.name).join(',') },
    createdAt: new Date().toISOString(),
  }
  await writeFileAtomic(join(image, IMAGE_MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`, 0o644)
  return manifest
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
    if (!path) throw buildError(`kernel module ${name} is neither in ${modulesDir} nor built in`)
    visiting.add(name)
    for (const dependency of await readModuleDepends(path)) await visit(dependency)
    ordered.push({ name, path })
  }
  for (const name of wanted) await visit(name)
  return ordered
}

/** The `depends=a,b` string in a module's .modinfo section (no modinfo binary needed). */
async function readModuleDepends(path: string): Promise<string[]> {
  const bytes = path.endsWith('.ko') ? await readFile(path) : (await execFileAsync(path.endsWith('.xz') ? 'xz' : 'zstd', ['-dc', path], { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024 })).stdout
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
