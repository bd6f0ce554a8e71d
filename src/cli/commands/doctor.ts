import { isVmPoolError } from '../../errors.js'
import { createProvider, getProviderNames } from '../../providers/provider-registry.js'
import { listImages } from '../../providers/qemu/images/image-store.js'
import { getImageDir } from '../../providers/qemu/qemu-image.js'
import type { ProviderProbe } from '../../providers/vm-provider.js'
import { formatBytes } from '../format-bytes.js'
import { getProviderName, getProviderOptions, parseCommandArgs, PROVIDER_OPTION, UsageError, type CliCommand } from '../cli-command.js'

interface DoctorEntry extends ProviderProbe {
  provider: string
  /** True for the provider `vm-pool` uses by default here (`--provider`, VM_POOL_PROVIDER, else qemu). */
  selected: boolean
}

export const doctorCommand: CliCommand = {
  name: 'doctor',
  summary: 'say which providers are usable here, and why not',
  help: `Usage: vm-pool doctor [--provider NAME] [--json]

Check every provider (or only NAME): usable here or not, why, and how to fix it.
For qemu: the QEMU binary, whether KVM really works (else TCG emulation), whether the image is built,
the snapshot fresh VMs are restored from (ready, none yet, or stale and why), and every image in the
image dir (kind, size, snapshots; \`vm-pool image ls\` shows more).

Options:
  -p, --provider NAME  check only this provider
  --json               print the results as a JSON array

VM_POOL_PROVIDER_OPTIONS (JSON) applies to the selected provider (default: VM_POOL_PROVIDER, else qemu).
Exit code: 0 when the selected provider is usable, 1 when it is not.
`,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, { ...PROVIDER_OPTION, json: { type: 'boolean' } })
    if (positionals.length > 0) throw new UsageError(`unexpected arguments: ${positionals.join(' ')}`)
    const selected = getProviderName(values.provider, io.env)
    const names = values.provider ? [values.provider] : getProviderNames()
    if (values.provider && !getProviderNames().includes(values.provider)) {
      throw new UsageError(`unknown provider ${JSON.stringify(values.provider)}; known: ${getProviderNames().join(', ')}`)
    }
    const entries: DoctorEntry[] = []
    for (const name of names) entries.push({ provider: name, selected: name === selected, ...(await probeProvider(name, name === selected ? getProviderOptions(io.env) : {})) })
    const qemu = entries.find((entry) => entry.provider === 'qemu')
    if (qemu) qemu.details = { ...qemu.details, images: await describeImages(qemu.details?.imageDir ?? getImageDir(undefined, io.env)) }

    if (values.json) {
      io.stdout.write(`${JSON.stringify(entries, null, 2)}\n`)
    } else {
      const width = Math.max(...entries.map((entry) => entry.provider.length), 8)
      for (const entry of entries) {
        io.stdout.write(`${entry.provider.padEnd(width)}  ${entry.usable ? 'usable    ' : 'NOT usable'}  ${entry.reason}${entry.selected ? '  (selected)' : ''}\n`)
        for (const [key, value] of Object.entries(entry.details ?? {})) io.stdout.write(`${' '.repeat(width + 2)}${key}: ${value}\n`)
        if (entry.hint) io.stdout.write(`${' '.repeat(width + 2)}hint: ${entry.hint}\n`)
      }
    }
    const chosen = entries.find((entry) => entry.selected)
    return chosen === undefined || chosen.usable ? 0 : 1
  },
}

/** `minimal (minimal, 45 MB), debian-12 (debian, 812 MB, 1 snapshot)`: what `vm-pool image ls` shows, on one line. */
async function describeImages(imageDir: string): Promise<string> {
  const images = await listImages(imageDir)
  if (images.length === 0) return `none in ${imageDir}`
  return images
    .map((image) => `${image.name} (${[image.problem ? `broken: ${image.problem}` : image.kind, formatBytes(image.sizeBytes), ...(image.snapshots.length > 0 ? [`${image.snapshots.length} snapshot${image.snapshots.length === 1 ? '' : 's'}`] : [])].join(', ')})`)
    .join(', ')
}

async function probeProvider(name: string, options: Record<string, unknown>): Promise<ProviderProbe> {
  try {
    const provider = await createProvider(name, options)
    try {
      if (!provider.probe) return { usable: true, reason: 'this provider has no self-check; assumed usable' }
      return await provider.probe()
    } finally {
      await provider.close?.()
    }
  } catch (error) {
    return {
      usable: false,
      reason: isVmPoolError(error) ? error.shortMessage : (error as Error).message,
      hint: isVmPoolError(error) ? error.hint : undefined,
    }
  }
}
