import { parseDuration } from '../../pool/duration.js'
import { WORKER_PREFIX } from '../../util/vm-name.js'
import { createPool, type VmLease } from '../../pool/vm-pool.js'
import { createProvider } from '../../providers/provider-registry.js'
import { getStateDir } from '../../util/state-dir.js'
import { PROVIDER_OPTION, getProviderName, getProviderOptions, parseCommandArgs, UsageError, type CliCommand } from '../cli-command.js'

const DEFAULT_TTL = '30m'
const DEFAULT_PARALLEL = 2

function parseCount(value: string | undefined, flag: string, min: number): number | undefined {
  if (value === undefined) return undefined
  const number = Number(value)
  if (!Number.isInteger(number) || number < min) throw new UsageError(`${flag} must be an integer >= ${min}, got ${JSON.stringify(value)}`)
  return number
}

export const warmCommand: CliCommand = {
  name: 'warm',
  summary: 'boot idle VMs ahead of time for later runs to adopt',
  help: `Usage: vm-pool warm --count N [--provider NAME] [--prefix P] [--ttl 30m] [--max N] [--image I] [--cpus N] [--memory-mib N] [--disk-gib N] [--json]

Make sure N idle warm VMs with this spec exist in the lease store (a CI setup step): idle VMs that
are already there and healthy count, the rest are booted. A later createPool({ keepWarm }) (or the
Vitest plugin) in any process that shares the store adopts them instead of booting, if it asks for the
same spec (image, cpus, memory, disk, labels). They are deleted after --ttl by the next pool or by
vm-pool gc; vm-pool gc --all deletes them now.

The lease store is this host's lease file (in VM_POOL_STATE_DIR), or a PostgreSQL database shared by
several machines: VM_POOL_LEASE_STORE=postgres://user:password@host/db (docs/pool.md, "Stores"); the VMs
must then live where those machines reach them (e.g. qemu with {"host": ...} in VM_POOL_PROVIDER_OPTIONS).

Options:
  --count N          how many idle VMs to have (required)
  -p, --provider NAME  provider (default: VM_POOL_PROVIDER, else qemu)
  --prefix P         VM name prefix (default: ${WORKER_PREFIX})
  --ttl AGE          idle lifetime: 90s, 30m, 2h (default: ${DEFAULT_TTL})
  --max N            at most N idle VMs in the store (default: --count)
  --parallel N       boots at the same time (default: ${DEFAULT_PARALLEL})
  --image I, --cpus N, --memory-mib N, --disk-gib N   the spec (default: the provider's defaults)
  --json             print the result as JSON on stdout
`,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, {
      ...PROVIDER_OPTION,
      count: { type: 'string' },
      prefix: { type: 'string' },
      ttl: { type: 'string' },
      max: { type: 'string' },
      parallel: { type: 'string' },
      image: { type: 'string' },
      cpus: { type: 'string' },
      'memory-mib': { type: 'string' },
      'disk-gib': { type: 'string' },
      json: { type: 'boolean' },
    })
    if (positionals.length > 0) throw new UsageError(`unexpected arguments: ${positionals.join(' ')}`)
    const count = parseCount(values.count, '--count', 1)
    if (count === undefined) throw new UsageError('--count N is required')
    const max = parseCount(values.max, '--max', count) ?? count
    const parallel = parseCount(values.parallel, '--parallel', 1) ?? DEFAULT_PARALLEL
    const ttlMs = parseDuration(values.ttl ?? DEFAULT_TTL, '--ttl')
    const spec = {
      ...(values.image !== undefined ? { image: values.image } : {}),
      ...(values.cpus !== undefined ? { cpus: parseCount(values.cpus, '--cpus', 1) } : {}),
      ...(values['memory-mib'] !== undefined ? { memoryMiB: parseCount(values['memory-mib'], '--memory-mib', 1) } : {}),
      ...(values['disk-gib'] !== undefined ? { diskGiB: parseCount(values['disk-gib'], '--disk-gib', 1) } : {}),
    }
    const providerName = getProviderName(values.provider, io.env)
    const providerOptions = getProviderOptions(io.env)
    const provider = await createProvider(providerName, providerOptions)
    const pool = createPool({
      provider,
      prefix: values.prefix ?? WORKER_PREFIX,
      keepWarm: { ttlMs, max },
      stateDir: getStateDir(undefined, io.env),
      reaper: { providerName, providerOptions: providerOptions as never },
      spec,
      warn: (message) => io.stderr.write(`vm-pool warm: warning: ${message}\n`),
    })
    const leases: VmLease[] = []
    let failure: unknown
    let next = 1
    // Leases are held until all N are there, so each acquire gets a different VM (adopted or booted).
    const worker = async () => {
      while (next <= count && failure === undefined && !io.signal.aborted) {
        const key = `warm-${next++}`
        try {
          const lease = await pool.acquire(key)
          leases.push(lease)
          io.stderr.write(`vm-pool warm: ${lease.name} ${lease.adopted ? 'was already warm' : 'booted'}\n`)
        } catch (error) {
          failure ??= error
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker))
    const drained = await pool.drain()
    if (failure !== undefined) throw failure
    if (values.json) {
      io.stdout.write(`${JSON.stringify({ warm: drained.keptWarm, booted: pool.stats.created, alreadyWarm: pool.stats.reused, runId: pool.runId }, null, 2)}\n`)
    } else {
      for (const name of drained.keptWarm) io.stdout.write(`${name}\n`)
      io.stderr.write(`vm-pool warm: ${drained.keptWarm.length} idle VM(s) (${pool.stats.created} booted, ${pool.stats.reused} already warm), ttl ${values.ttl ?? DEFAULT_TTL}\n`)
    }
    return io.signal.aborted ? 1 : 0
  },
}
