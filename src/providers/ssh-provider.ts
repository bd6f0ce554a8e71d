import { mkdir, readFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
import lockfile from 'proper-lockfile'
import { z } from 'zod'
import { VmPoolError, invalidOptions, isVmPoolError } from '../errors.js'
import { formatZodError } from '../config/zod-error.js'
import { sshEndpointFields } from '../transport/ssh-connection.js'
import { SshTransport } from '../transport/ssh-transport.js'
import { quoteShellArg } from '../transport/shell.js'
import { writeFileAtomic } from '../util/fs-atomic.js'
import { getStateDir } from '../util/state-dir.js'
import { scaleTimeout } from '../util/timeouts.js'
import { validateVmName } from '../util/vm-name.js'
import { withExecLog } from './exec-log.js'
import { parseProviderOptions } from './parse-provider-options.js'
import { VmPortForwards } from './vm-port-forwards.js'
import type { ExecOptions, ExecResult, KeptVmHelp, ProviderProbe, Vm, VmInfo, VmProvider, VmRecord, VmSpec } from './vm-provider.js'

const PROVIDER = 'ssh'

/** Time allowed for the `reset` command that `delete` runs before a host is handed out again. */
export const SSH_RESET_TIMEOUT_MS = 300_000
/** Time allowed for the `true` that `create` and `probe` run to prove a host answers. */
export const SSH_HOST_CHECK_TIMEOUT_MS = 30_000
/** Exec channels per connection to a host: OpenSSH's default MaxSessions is 10, two stay free for others. */
export const SSH_HOST_MAX_CHANNELS = 8
/** Connections per host: more concurrent execs get more connections rather than a queue (32 at once). */
export const SSH_HOST_MAX_CONNECTIONS = 4
/** A lease-file lock older than this is considered left behind by a crashed process. */
export const SSH_LEASE_LOCK_STALE_MS = 10_000

const sshHostSchema = z
  .object({
    ...sshEndpointFields,
    user: z.string().min(1),
  })
  .strict()

export const sshProviderOptionsSchema = z
  .object({
    /** The machines to hand out, one holder at a time each. */
    hosts: z.array(sshHostSchema).min(1),
    /** A shell line run on the host by `delete` before it is freed (e.g. `rm -rf ~/work`). A failure keeps the host leased. */
    reset: z.string().min(1).optional(),
    /** Where the lease file lives (shared by every process on this machine). @default `VM_POOL_STATE_DIR` or `~/.cache/vm-pool` */
    stateDir: z.string().min(1).optional(),
  })
  .strict()
  .superRefine((options, context) => {
    const seen = new Set<string>()
    options.hosts.forEach((host, index) => {
      const id = hostId(host)
      if (seen.has(id)) context.addIssue({ code: 'custom', path: ['hosts', index], message: `${id} is listed twice` })
      seen.add(id)
    })
  })

export type SshProviderOptions = z.input<typeof sshProviderOptionsSchema>
type SshHost = z.output<typeof sshHostSchema>

interface Lease {
  vm: string
  hostId: string
  leasedAt: string
  labels?: Record<string, string>
  owner: { pid: number; host: string }
}
const leaseFileSchema = z.object({ leases: z.record(z.string(), z.custom<Lease>((value) => typeof value === 'object' && value !== null)) })

function hostId(host: { user: string; host: string; port: number }): string {
  return `${host.user}@${host.host}:${host.port}`
}

/**
 * Machines that already exist (a lab, a CI fleet): `create` leases a free host to the VM name, `delete`
 * runs `reset` and frees it. Leases live in one JSON file under the state dir, changed only under a
 * proper-lockfile lock, so no two holders get the same host — also across processes on this machine.
 * Processes on other machines do not see this file: give each CI machine its own hosts.
 */
export function sshProvider(options: SshProviderOptions): VmProvider {
  const parsed = parseProviderOptions(sshProviderOptionsSchema, options, PROVIDER, 'from the CLI, pass the hosts as JSON: VM_POOL_PROVIDER_OPTIONS=\'{"hosts":[{"host":"10.0.0.5","user":"ci","privateKey":"..."}]}\'')
  const hosts = new Map<string, SshHost>(parsed.hosts.map((host) => [hostId(host), host]))
  const { reset, stateDir } = parsed
  const dir = () => join(getStateDir(stateDir), 'ssh')
  const leasePath = () => join(dir(), 'leases.json')
  const transports = new Map<string, SshTransport>()
  const forwards = new VmPortForwards()

  const transportFor = (id: string): SshTransport => {
    let transport = transports.get(id)
    if (!transport) {
      const host = hosts.get(id)
      if (!host) throw invalidOptions(`host ${id} is not in this sshProvider's hosts`, { provider: PROVIDER, hint: 'connect with the same hosts list that created the lease' })
      transport = new SshTransport({ host: host.host, port: host.port, username: host.user, privateKey: host.privateKey, hostKey: host.hostKey, maxChannels: SSH_HOST_MAX_CHANNELS, maxConnections: SSH_HOST_MAX_CONNECTIONS, provider: PROVIDER })
      transports.set(id, transport)
    }
    return transport
  }

  async function readLeases(): Promise<Record<string, Lease>> {
    let text: string
    try {
      text = await readFile(leasePath(), 'utf8')
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return {}
      throw error
    }
    const hint = 'delete it once no test run is using the ssh hosts'
    let data: unknown
    try {
      data = JSON.parse(text)
    } catch (error) {
      throw new VmPoolError({ code: 'VMPOOL_LEASE_STORE', provider: PROVIDER, message: `${leasePath()} is not a lease file: not JSON`, hint, cause: error })
    }
    const result = leaseFileSchema.safeParse(data)
    if (!result.success) throw new VmPoolError({ code: 'VMPOOL_LEASE_STORE', provider: PROVIDER, message: `${leasePath()} is not a lease file: ${formatZodError(result.error)}`, hint })
    return result.data.leases
  }

  /** Read-modify-write of the lease file under the lock; the lock is released whatever happens. */
  async function withLeases<T>(change: (leases: Record<string, Lease>) => T): Promise<T> {
    await mkdir(dir(), { recursive: true, mode: 0o700 })
    let release: () => Promise<void>
    try {
      release = await lockfile.lock(dir(), { realpath: false, lockfilePath: join(dir(), 'leases.lock'), stale: SSH_LEASE_LOCK_STALE_MS, retries: { retries: 100, minTimeout: 20, maxTimeout: 250, factor: 1.5 } })
    } catch (error) {
      throw new VmPoolError({ code: 'VMPOOL_LEASE_STORE', provider: PROVIDER, message: `could not lock ${join(dir(), 'leases.lock')}: ${(error as Error).message}`, cause: error })
    }
    try {
      const leases = await readLeases()
      const result = change(leases)
      await writeFileAtomic(leasePath(), `${JSON.stringify({ leases }, null, 2)}\n`)
      return result
    } finally {
      await release()
    }
  }

  const findLease = (leases: Record<string, Lease>, name: string) => Object.values(leases).find((lease) => lease.vm === name)
  const notFound = (name: string, operation: string) => new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation, vm: name, message: `no host is leased to ${name} (deleted, or never created)` })

  /** The host still belongs to `name`: a stale Vm handle must never run commands on the next holder's lease. */
  async function requireLease(name: string, id: string, operation: string): Promise<SshTransport> {
    const lease = findLease(await readLeases(), name)
    if (!lease || lease.hostId !== id) throw notFound(name, operation)
    return transportFor(id)
  }

  const makeVm = (record: VmRecord, id: string): Vm => {
    const { forwards: vmForwards, release } = forwards.open(record.name)
    // The connections are shared by every Vm on that host in this process; provider.close() ends them.
    const close = () => release()
    return withExecLog<Vm>({
      name: record.name,
      provider: PROVIDER,
      record,
      async exec(command: string | string[], execOptions?: ExecOptions): Promise<ExecResult> {
        return (await requireLease(record.name, id, 'exec')).exec(command, execOptions)
      },
      async putFile(path: string, data: string | Buffer): Promise<void> {
        await (await requireLease(record.name, id, 'putFile')).putFile(path, data)
      },
      async getFile(path: string): Promise<Buffer> {
        return (await requireLease(record.name, id, 'getFile')).getFile(path)
      },
      async putDirectory(localDir: string, guestDir: string): Promise<void> {
        await (await requireLease(record.name, id, 'putDirectory')).putDirectory(localDir, guestDir)
      },
      async getDirectory(guestDir: string, localDir: string): Promise<void> {
        await (await requireLease(record.name, id, 'getDirectory')).getDirectory(guestDir, localDir)
      },
      async forwardPort(guestPort, forwardOptions) {
        return vmForwards.track(await (await requireLease(record.name, id, 'forwardPort')).forwardPort(guestPort, forwardOptions))
      },
      close,
      [Symbol.asyncDispose]: close,
    })
  }

  const toRecord = (lease: Lease, spec: VmSpec): VmRecord => {
    const host = hosts.get(lease.hostId)
    return { name: lease.vm, provider: PROVIDER, createdAt: lease.leasedAt, spec, data: { hostId: lease.hostId, host: host?.host ?? null, port: host?.port ?? null, user: host?.user ?? null } }
  }

  return {
    name: PROVIDER,

    async create(spec: VmSpec): Promise<VmRecord> {
      const name = validateVmName(spec.name, PROVIDER)
      const lease = await withLeases((leases) => {
        if (findLease(leases, name)) throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `a host is already leased to ${name}`, hint: `delete it first: vm-pool gc --provider ssh --prefix ${name}` })
        const free = [...hosts.keys()].find((id) => leases[id] === undefined)
        if (free === undefined) {
          throw new VmPoolError({
            code: 'VMPOOL_NO_CAPACITY',
            provider: PROVIDER,
            operation: 'create',
            vm: name,
            message: `all ${hosts.size} ssh host${hosts.size === 1 ? ' is' : 's are'} leased (${Object.values(leases).map((l) => l.vm).join(', ')})`,
            hint: 'add hosts, lower the number of workers, or free hosts with `vm-pool gc --provider ssh`',
            details: { hosts: hosts.size },
          })
        }
        const created: Lease = { vm: name, hostId: free, leasedAt: new Date().toISOString(), ...(spec.labels ? { labels: { ...spec.labels } } : {}), owner: { pid: process.pid, host: hostname() } }
        leases[free] = created
        return created
      })
      try {
        const check = await transportFor(lease.hostId).exec('true', { timeoutMs: scaleTimeout(SSH_HOST_CHECK_TIMEOUT_MS) })
        if (check.exitCode !== 0) throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `host ${lease.hostId} did not run \`true\` (exit code ${check.exitCode}${check.timedOut ? ', timed out (SSH_HOST_CHECK_TIMEOUT_MS)' : ''})` })
      } catch (error) {
        // A host we cannot use goes back to the pool untouched.
        await withLeases((leases) => {
          if (leases[lease.hostId]?.vm === name) delete leases[lease.hostId]
        })
        throw error
      }
      return toRecord(lease, structuredClone(spec))
    },

    async connect(record: VmRecord): Promise<Vm> {
      const name = validateVmName(record.name, PROVIDER)
      const lease = findLease(await readLeases(), name)
      if (!lease || (record.data.hostId !== undefined && record.data.hostId !== lease.hostId)) throw notFound(name, 'connect')
      transportFor(lease.hostId)
      return makeVm(record, lease.hostId)
    },

    async delete(name: string): Promise<void> {
      validateVmName(name, PROVIDER)
      const lease = findLease(await readLeases(), name)
      await forwards.closeVm(name)
      if (!lease) return
      if (reset !== undefined && hosts.has(lease.hostId)) {
        const result = await transportFor(lease.hostId).exec(reset, { timeoutMs: scaleTimeout(SSH_RESET_TIMEOUT_MS) })
        if (result.exitCode !== 0) {
          throw new VmPoolError({
            code: 'VMPOOL_DELETE_FAILED',
            provider: PROVIDER,
            operation: 'delete',
            vm: name,
            message: `the reset command failed on ${lease.hostId} with exit code ${result.exitCode}${result.timedOut ? ' (timed out, SSH_RESET_TIMEOUT_MS)' : ''}: ${result.stderr.trim().slice(0, 300)}`,
            hint: 'the host stays leased so nobody gets a dirty machine; fix it, then run `vm-pool gc --provider ssh` again',
          })
        }
      }
      await withLeases((leases) => {
        if (leases[lease.hostId]?.vm === name) delete leases[lease.hostId]
      })
    },

    async list(): Promise<VmInfo[]> {
      return Object.values(await readLeases())
        .sort((a, b) => a.vm.localeCompare(b.vm))
        .map((lease) => ({ name: lease.vm, provider: PROVIDER, state: 'running' as const, createdAt: lease.leasedAt, ...(lease.labels ? { labels: lease.labels } : {}), record: toRecord(lease, { name: lease.vm, ...(lease.labels ? { labels: lease.labels } : {}) }) }))
    },

    async probe(): Promise<ProviderProbe> {
      const leases = await readLeases().catch(() => ({}) as Record<string, Lease>)
      const problems: string[] = []
      let reachable = 0
      for (const id of hosts.keys()) {
        try {
          const result = await transportFor(id).exec('true', { timeoutMs: scaleTimeout(SSH_HOST_CHECK_TIMEOUT_MS) })
          if (result.exitCode === 0) reachable++
          else problems.push(`${id}: \`true\` exited ${result.exitCode}`)
        } catch (error) {
          problems.push(`${id}: ${isVmPoolError(error) ? error.shortMessage : String(error)}`)
        }
      }
      const leased = Object.keys(leases).length
      const summary = `${reachable} of ${hosts.size} hosts reachable, ${leased} leased`
      return reachable > 0
        ? { usable: true, reason: summary + (problems.length ? `; ${problems.join('; ')}` : ''), details: { leaseFile: leasePath() } }
        : { usable: false, reason: `${summary}: ${problems.join('; ')}`, hint: 'check the hosts list: address, user, key, pinned host key', details: { leaseFile: leasePath() } }
    },

    describe(record: VmRecord): KeptVmHelp {
      const name = validateVmName(record.name, PROVIDER)
      const { host, port, user, hostId: id } = record.data
      const target = typeof id === 'string' ? id : 'its host'
      return {
        // The key is never printed: it is whichever private key the hosts list gives for that host.
        reach: typeof host === 'string' && typeof user === 'string' ? `ssh -p ${Number(port) || 22} ${quoteShellArg(`${user}@${host}`)}   (with the private key of ${target} in the sshProvider hosts list)` : `the host leased to ${name} (vm-pool ls --provider ssh)`,
        remove: `from code: sshProvider(<the same options>).delete('${name}'): runs the reset command on ${target} and frees its lease in ${leasePath()}`,
      }
    },

    async close(): Promise<void> {
      await forwards.closeAll()
      await Promise.all([...transports.values()].map((transport) => transport.close()))
      transports.clear()
    },
  }
}
