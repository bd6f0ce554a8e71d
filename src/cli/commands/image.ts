import { buildMinimalImage } from '../../providers/qemu/image-builder.js'
import { getImageDir } from '../../providers/qemu/qemu-image.js'
import { parseCommandArgs, UsageError, type CliCommand } from '../cli-command.js'

export const imageCommand: CliCommand = {
  name: 'image',
  summary: 'build the default QEMU guest image',
  help: `Usage: vm-pool image build [--force] [--image-dir DIR] [--json]

Build the default "minimal" QEMU guest image from Debian packages: the Debian kernel (downloaded
with apt-get download and unpacked, not installed), busybox and dropbear in an initramfs, a client
key pair the guest trusts and a guest host key the host pins. A cached, up-to-date image is reused.

Options:
  --force           rebuild even if the cached image is up to date
  --image-dir DIR   where images live (default: VM_POOL_IMAGE_DIR, else <state dir>/images)
  --json            print the result as JSON on stdout

Progress goes to stderr. Needs: apt-get, dpkg-deb, cpio, gzip, busybox-static, dropbear-bin.
`,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, {
      force: { type: 'boolean' },
      'image-dir': { type: 'string' },
      json: { type: 'boolean' },
    })
    const [action, ...extra] = positionals
    if (action !== 'build') throw new UsageError(action === undefined ? 'missing action: vm-pool image build' : `unknown action ${JSON.stringify(action)} (only "build")`)
    if (extra.length > 0) throw new UsageError(`unexpected arguments: ${extra.join(' ')}`)
    const imageDir = getImageDir(values['image-dir'], io.env)
    const result = await buildMinimalImage({
      imageDir,
      force: values.force ?? false,
      signal: io.signal,
      log: (line) => io.stderr.write(`vm-pool image: ${line}\n`),
    })
    if (values.json) {
      io.stdout.write(`${JSON.stringify({ dir: result.dir, reused: result.reused, durationMs: result.durationMs, kernel: result.manifest.build.kernelVersion, hostKey: result.manifest.hostKey }, null, 2)}\n`)
    } else {
      io.stdout.write(`${result.dir}\n`)
    }
    return 0
  },
}
