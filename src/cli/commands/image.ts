import { join } from 'node:path'
import { formatDuration } from '../../pool/duration.js'
import { qemuProvider } from '../../providers/qemu/qemu-provider.js'
import { importImage } from '../../providers/qemu/images/cloud-image.js'
import { IMAGE_RECIPES, buildImage } from '../../providers/qemu/images/image-recipes.js'
import { listImages, removeImage, type ImageInfo } from '../../providers/qemu/images/image-store.js'
import { getImageDir } from '../../providers/qemu/qemu-image.js'
import { formatBytes } from '../format-bytes.js'
import { parseCommandArgs, UsageError, type CliCommand, type CliIo } from '../cli-command.js'

const SOURCES = ['auto', 'apt', 'debian-archive'] as const

export const imageCommand: CliCommand = {
  name: 'image',
  summary: 'build, import, list and remove QEMU guest images',
  help: `Usage:
  vm-pool image build [RECIPE] [--force] [--json]                     RECIPE: ${IMAGE_RECIPES.join(' (default), ')}
  vm-pool image build debian-12 [--packages a,b] [--script FILE] [--cloud-init] [--name NAME]
  vm-pool image import NAME --disk FILE.qcow2 [--kernel FILE [--initrd FILE] [--append LINE]] [--user NAME] [--force]
  vm-pool image ls [--json]
  vm-pool image rm NAME [--force]

build minimal     the default image: the Debian kernel (its .deb unpacked, not installed), busybox and
                  dropbear in an initramfs. Packages come from this host's apt when it is Debian's,
                  else straight from Debian's archive over HTTPS, SHA256-checked (--source).
build debian-12   Debian 12 built with mmdebstrap (needs root): systemd, OpenSSH, sudo, a user
                  "debian" with passwordless sudo, DHCP, a root file system that grows to the VM's
                  disk; booted with its own kernel and initrd. About 2 min on an idle 2-core host.
                  --packages adds Debian packages; --script runs a script as root in the new system
                  (a failure shows its output and keeps nothing); --cloud-init makes a cloud-style
                  image (cloud-init, no baked key; the key comes from a NoCloud seed); --name stores
                  it under another name.
import            copy a cloud image (Ubuntu, Debian) and make its NoCloud seed: cloud-init creates
                  the user (--user, default "debian") with the image's key, pins the host key.
                  --kernel/--initrd boot those directly (faster), with --append (default
                  "root=/dev/vda1 rw console=ttyS0 panic=-1"); without them the disk's bootloader runs.
ls                every image: kind, size on disk, snapshots (size, last use).
rm                remove an image and its snapshots; refused while running VMs use it (--force).

A cached build whose recipe and inputs did not change is reused; --force rebuilds.

Options:
  --image-dir DIR   where images live (default: VM_POOL_IMAGE_DIR, else <state dir>/images)
  --source S        minimal image's packages: auto (default), apt, debian-archive
  --json            print the result as JSON on stdout

Progress goes to stderr. VM_POOL_DEBIAN_MIRROR overrides https://deb.debian.org/debian.
`,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, {
      force: { type: 'boolean' },
      'image-dir': { type: 'string' },
      json: { type: 'boolean' },
      packages: { type: 'string' },
      script: { type: 'string' },
      'cloud-init': { type: 'boolean' },
      name: { type: 'string' },
      source: { type: 'string' },
      disk: { type: 'string' },
      kernel: { type: 'string' },
      initrd: { type: 'string' },
      append: { type: 'string' },
      user: { type: 'string' },
    })
    const [action, ...rest] = positionals
    const imageDir = getImageDir(values['image-dir'], io.env)
    const log = (line: string) => io.stderr.write(`vm-pool image: ${line}\n`)
    const allow = (...names: Array<keyof typeof values>) => {
      const extra = (Object.keys(values) as Array<keyof typeof values>).filter((key) => values[key] !== undefined && !['image-dir', 'json', ...names].includes(key))
      if (extra.length > 0) throw new UsageError(`--${extra.join(', --')} ${extra.length === 1 ? 'is' : 'are'} not an option of \`image ${action}\``)
    }

    if (action === 'build') {
      allow('force', 'packages', 'script', 'cloud-init', 'name', 'source')
      if (rest.length > 1) throw new UsageError(`unexpected arguments: ${rest.slice(1).join(' ')}`)
      if (values.source !== undefined && !(SOURCES as readonly string[]).includes(values.source)) throw new UsageError(`--source must be one of ${SOURCES.join(', ')}, got ${JSON.stringify(values.source)}`)
      const result = await buildImage(rest[0], {
        imageDir,
        force: values.force ?? false,
        signal: io.signal,
        log,
        source: values.source as (typeof SOURCES)[number] | undefined,
        packages: values.packages?.split(',').map((pkg) => pkg.trim()).filter(Boolean),
        script: values.script,
        cloudInit: values['cloud-init'],
        name: values.name,
      })
      const { manifest } = result
      if (values.json) io.stdout.write(`${JSON.stringify({ dir: result.dir, name: manifest.name, kind: manifest.kind, reused: result.reused, durationMs: result.durationMs, kernel: manifest.build.kernelVersion, hostKey: manifest.hostKey }, null, 2)}\n`)
      else io.stdout.write(`${result.dir}\n`)
      return 0
    }

    if (action === 'import') {
      allow('force', 'disk', 'kernel', 'initrd', 'append', 'user')
      const [name, ...extra] = rest
      if (!name) throw new UsageError('missing NAME: vm-pool image import NAME --disk FILE.qcow2')
      if (extra.length > 0) throw new UsageError(`unexpected arguments: ${extra.join(' ')}`)
      if (!values.disk) throw new UsageError('missing --disk FILE.qcow2')
      if (values.append && !values.kernel) throw new UsageError('--append needs --kernel (the command line of a directly booted kernel)')
      const result = await importImage({ imageDir, name, disk: values.disk, kernel: values.kernel, initrd: values.initrd, append: values.append, user: values.user, force: values.force, log })
      if (values.json) io.stdout.write(`${JSON.stringify({ dir: result.dir, name, kind: result.manifest.kind, durationMs: result.durationMs, hostKey: result.manifest.hostKey, user: result.manifest.sudoUser }, null, 2)}\n`)
      else io.stdout.write(`${result.dir}\n`)
      return 0
    }

    if (action === 'ls') {
      allow()
      if (rest.length > 0) throw new UsageError(`unexpected arguments: ${rest.join(' ')}`)
      const images = await listImages(imageDir)
      if (values.json) io.stdout.write(`${JSON.stringify(images, null, 2)}\n`)
      else writeImageTable(images, imageDir, io)
      return 0
    }

    if (action === 'rm') {
      allow('force')
      const [name, ...extra] = rest
      if (!name) throw new UsageError('missing NAME: vm-pool image rm NAME')
      if (extra.length > 0) throw new UsageError(`unexpected arguments: ${extra.join(' ')}`)
      const inUseBy = await findVmsUsing(join(imageDir, name))
      const removed = await removeImage(imageDir, name, { inUseBy, force: values.force })
      io.stdout.write(`removed image ${name} (${formatBytes(removed.removedBytes)}${removed.snapshots > 0 ? `, with ${removed.snapshots} snapshot${removed.snapshots === 1 ? '' : 's'}` : ''})\n`)
      return 0
    }

    throw new UsageError(action === undefined ? 'missing action: build, import, ls or rm' : `unknown action ${JSON.stringify(action)} (build, import, ls, rm)`)
  },
}

/** Running QEMU VMs (this state dir) booted from the image dir. */
async function findVmsUsing(imageDir: string): Promise<string[]> {
  const provider = qemuProvider()
  try {
    const vms = await provider.list()
    return vms.filter((vm) => vm.state === 'running' && (vm.record?.data as { image?: string } | undefined)?.image === imageDir).map((vm) => vm.name)
  } finally {
    await provider.close()
  }
}

function writeImageTable(images: ImageInfo[], imageDir: string, io: CliIo): void {
  if (images.length === 0) {
    io.stdout.write(`(no images in ${imageDir}; build one with \`vm-pool image build\`)\n`)
    return
  }
  const now = Date.now()
  const age = (iso: string | undefined) => (iso ? `${formatDuration(Math.max(0, now - Date.parse(iso)))} ago` : '-')
  const table = [
    ['NAME', 'KIND', 'SIZE', 'BUILT', 'SNAPSHOTS'],
    ...images.map((image) => [
      image.name,
      image.kind,
      formatBytes(image.sizeBytes),
      image.problem ?? age(image.createdAt),
      image.snapshots.length === 0 ? '-' : image.snapshots.map((snapshot) => `${formatBytes(snapshot.sizeBytes)} (used ${age(snapshot.lastUsedAt)})`).join(', '),
    ]),
  ]
  const widths = table[0]!.map((_, column) => Math.max(...table.map((cells) => cells[column]!.length)))
  for (const cells of table) io.stdout.write(`${cells.map((cell, column) => (column === cells.length - 1 ? cell : cell.padEnd(widths[column]!))).join('  ')}\n`)
}
