import { z } from 'zod'
import { VmPoolError, isVmPoolError } from '../errors.js'
import { sshEndpointFields } from '../transport/ssh-connection.js'
import { SshTransport } from '../transport/ssh-transport.js'
import { scaleTimeout } from '../util/timeouts.js'
import { validateImageName, validateVmName } from '../util/vm-name.js'
import { createCliGuestVm } from './cli-guest-vm.js'
import { waitUntilExecWorks } from './wait-until-exec-works.js'
import { createLocalCommandRunner, createSshCommandRunner, type CommandRunner } from '../transport/command-runner.js'
import { parseProviderOptions } from './parse-provider-options.js'
import { makeVmStateMap } from './vm-state-map.js'
import type { ExecResult, KeptVmHelp, LocalCommand, ProviderProbe, Vm, VmInfo, VmProvider, VmRecord, VmSpec } from './vm-provider.js'
import { parseJsonOutput } from '../config/parse-json-output.js'

const PROVIDER = 'multipass'

/** `multipass launch` downloads the image on first use, then boots and runs cloud-init. */
export const MULTIPASS_LAUNCH_TIMEOUT_MS = 600_000
/** After launch: until `multipass exec` runs a command in the new instance. */
export const MULTIPASS_READY_TIMEOUT_MS = 120_000
/** list / info / delete / version. */
export const MULTIPASS_CLI_TIMEOUT_MS = 120_000
/** Multipass's exit code when the client cannot reach multipassd. */
export const MULTIPASS_DAEMON_UNAVAILABLE_EXIT_CODE = 3

const MISSING_HINT = 'install Multipass (https://multipass.run; `sudo snap install multipass` on Ubuntu), or set multipassBinary'
const UNAVAILABLE_HINT = 'is multipassd running? Try `multipass version`; on Linux `sudo snap restart multipass`'

export const multipassProviderOptionsSchema = z
  .object({
    /** Run every `multipass` command on this host over SSH. @default this machine */
    host: sshEndpointFields.host.optional(),
    /** SSH port of `host`. @default 22 */
    port: sshEndpointFields.port,
    /** SSH user on `host` (required with `host`). */
    user: z.string().min(1).optional(),
    /** Private key for `host` (required with `host`); see sshEndpointFields. Never logged. */
    privateKey: sshEndpointFields.privateKey.optional(),
    /** Pinned host key of `host`; see sshEndpointFields. */
    hostKey: sshEndpointFields.hostKey,
    /** Default image for `multipass launch` (`24.04`, `jammy`, a blueprint); `VmSpec.image` wins. @default Multipass's LTS */
    image: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:/-]*$/, 'expected an image name such as 24.04 or jammy').optional(),
    /** @default 1 */
    cpus: z.number().int().min(1).default(1),
    /** @default 1024 */
    memoryMiB: z.number().int().min(128).default(1024),
    /** @default 5 */
    diskGiB: z.number().int().min(1).default(5),
    /** cloud-init user-data (the YAML text), passed as `--cloud-init -` on stdin so it also works remotely. */
    cloudInit: z.string().min(1).optional(),
    /** The multipass executable on the machine that runs it. @default 'multipass' */
    multipassBinary: z.string().min(1).default('multipass'),
  })
  .strict()
  .superRefine((options, context) => {
    if (options.host === undefined) {
      for (const key of ['user', 'privateKey', 'hostKey'] as const) {
        if (options[key] !== undefined) context.addIssue({ code: 'custom', path: [key], message: `${key} is only used with host` })
      }
      return
    }
    if (options.user === undefined) context.addIssue({ code: 'custom', path: ['user'], message: 'required when host is set' })
    if (options.privateKey === undefined) context.addIssue({ code: 'custom', path: ['privateKey'], message: 'required when host is set' })
  })

export type MultipassProviderOptions = z.input<typeof multipassProviderOptionsSchema>

const listSchema = z.object({ list: z.array(z.looseObject({ name: z.string(), state: z.string(), ipv4: z.array(z.string()).optional(), release: z.string().optional() })) })
const infoSchema = z.looseObject({ info: z.record(z.string(), z.looseObject({ state: z.string(), ipv4: z.array(z.string()).optional() })) })
const toVmState = makeVmStateMap({ running: ['Running'], starting: ['Starting', 'Restarting'], stopped: ['Stopped', 'Suspended', 'Suspending'], dead: ['Deleted'] })

/**
 * Canonical Multipass instances, through the `multipass` CLI on this machine or, with `host`, on
 * another machine over SSH. Multipass has no labels: ownership is encoded in the instance
 * name (`vitest-worker-<runId>-<slot>`), which is what `vm-pool gc` sweeps; `VmSpec.labels` stay in
 * the VmRecord only.
 */
export function multipassProvider(options: MultipassProviderOptions = {}): VmProvider {
  const { privateKey, ...rest } = parseProviderOptions(multipassProviderOptionsSchema, options, PROVIDER)
  const config = Object.freeze(rest)
  const runner: CommandRunner =
    config.host === undefined
      ? createLocalCommandRunner({ provider: PROVIDER, missingHint: MISSING_HINT })
      : createSshCommandRunner(
          new SshTransport({ host: config.host, port: config.port, username: config.user!, privateKey: privateKey!, hostKey: config.hostKey, provider: PROVIDER }),
          { provider: PROVIDER, binary: config.multipassBinary, missingHint: `${MISSING_HINT} on ${config.host}` },
        )
  const where = config.host === undefined ? 'local' : `${config.user}@${config.host}:${config.port}`
  const multipass = (args: string[], input?: string, timeoutMs = MULTIPASS_CLI_TIMEOUT_MS) =>
    runner.run([config.multipassBinary, ...args], { input, timeoutMs: scaleTimeout(timeoutMs) })

  const notFoundIn = (stderr: string, name: string) => stderr.includes(`instance "${name}" does not exist`)
  const cliFailure = (result: ExecResult, operation: string, name?: string): VmPoolError => {
    const stderr = result.stderr.trim().slice(0, 500)
    const base = { provider: PROVIDER, operation, vm: name, details: { exitCode: result.exitCode, where } }
    if (result.exitCode === MULTIPASS_DAEMON_UNAVAILABLE_EXIT_CODE || /cannot connect to the multipass socket/.test(stderr)) {
      return new VmPoolError({ ...base, code: 'VMPOOL_PROVIDER_UNAVAILABLE', message: `the Multipass daemon is unavailable on ${runner.where}: ${stderr || `exit code ${result.exitCode}`}`, hint: UNAVAILABLE_HINT })
    }
    if (name !== undefined && notFoundIn(stderr, name)) {
      return new VmPoolError({ ...base, code: 'VMPOOL_VM_NOT_FOUND', message: `instance ${name} does not exist on ${runner.where} (deleted, or never created)` })
    }
    if (result.timedOut) {
      return new VmPoolError({ ...base, code: 'VMPOOL_TIMEOUT', message: `multipass ${operation} did not answer within ${scaleTimeout(MULTIPASS_CLI_TIMEOUT_MS)} ms (MULTIPASS_CLI_TIMEOUT_MS) on ${runner.where}`, hint: 'set VM_POOL_TIMEOUT_SCALE=2 (or higher) on slow hosts' })
    }
    const code = operation === 'create' ? 'VMPOOL_CREATE_FAILED' : operation === 'delete' ? 'VMPOOL_DELETE_FAILED' : 'VMPOOL_EXEC_FAILED'
    return new VmPoolError({ ...base, code, message: `multipass ${operation} failed on ${runner.where} with exit code ${result.exitCode}: ${stderr || '(no output)'}` })
  }

  const makeVm = (record: VmRecord): Vm =>
    createCliGuestVm({
      record,
      provider: PROVIDER,
      runInGuest: (argv, runOptions) => runner.run([config.multipassBinary, 'exec', record.name, '--', ...argv], runOptions),
      // The command's own exit codes pass through `multipass exec`; multipass's failures are told apart
      // by their `exec failed:` line (exit 2) or the daemon message (exit 3).
      classifyFailure: (result, operation) => {
        if (result.exitCode === 2 && /^exec failed: /m.test(result.stderr)) return cliFailure(result, operation, record.name)
        if (result.exitCode === MULTIPASS_DAEMON_UNAVAILABLE_EXIT_CODE && /cannot connect to the multipass socket/.test(result.stderr)) return cliFailure(result, operation, record.name)
        return undefined
      },
      // Multipass has no port forwarding; its instances have an address the machine running multipassd reaches.
      forwardPortUnsupported: async (guestPort) => {
        let address: string | undefined
        try {
          const info = await multipass(['info', record.name, '--format', 'json'])
          if (info.exitCode === 0) address = parseJsonOutput(infoSchema, info.stdout, 'multipass info --format json', PROVIDER).info[record.name]?.ipv4?.[0]
        } catch {
          // the hint says how to look it up
        }
        const at = address ? `${address}:${guestPort}` : `<instance address>:${guestPort} (\`multipass info ${record.name}\` shows it)`
        return {
          message: `multipass cannot forward ports: guest port ${guestPort} of ${record.name} is not forwarded`,
          hint: `connect to the instance's own address instead: ${at}, from ${where === 'local' ? 'this machine' : where}; the server must listen on that address (0.0.0.0), not only on 127.0.0.1`,
        }
      },
    })

  const deleteInstance = async (name: string): Promise<void> => {
    const result = await multipass(['delete', '--purge', name])
    if (result.exitCode === 0 || notFoundIn(result.stderr, name)) return
    throw cliFailure(result, 'delete', name)
  }

  return {
    name: PROVIDER,

    async create(spec: VmSpec): Promise<VmRecord> {
      const name = validateVmName(spec.name, PROVIDER)
      const image = spec.image ?? config.image
      if (image !== undefined) validateImageName(image, PROVIDER)
      const memoryMiB = spec.memoryMiB ?? config.memoryMiB
      const args = ['launch', ...(image ? [image] : []), '--name', name, '--cpus', String(spec.cpus ?? config.cpus), '--memory', memoryMiB % 1024 === 0 ? `${memoryMiB / 1024}G` : `${memoryMiB}M`, '--disk', `${spec.diskGiB ?? config.diskGiB}G`]
      if (config.cloudInit !== undefined) args.push('--cloud-init', '-')
      const launchMs = scaleTimeout(MULTIPASS_LAUNCH_TIMEOUT_MS)
      const result = await runner.run([config.multipassBinary, ...args], { input: config.cloudInit, timeoutMs: launchMs })
      if (result.timedOut) {
        await deleteInstance(name).catch(() => undefined)
        throw new VmPoolError({ code: 'VMPOOL_BOOT_TIMEOUT', provider: PROVIDER, operation: 'create', vm: name, message: `multipass launch did not finish within ${launchMs} ms (MULTIPASS_LAUNCH_TIMEOUT_MS) on ${runner.where}`, hint: 'the first launch of an image downloads it: set VM_POOL_TIMEOUT_SCALE=2 (or higher)' })
      }
      if (result.exitCode !== 0) {
        // A launch that failed half way can leave a broken instance behind; an existing one is not ours to delete.
        if (!/already exists/.test(result.stderr)) await deleteInstance(name).catch(() => undefined)
        throw cliFailure(result, 'create', name)
      }
      const record: VmRecord = {
        name,
        provider: PROVIDER,
        createdAt: new Date().toISOString(),
        spec: structuredClone(spec),
        data: { host: where, ...(image ? { image } : {}) },
      }
      try {
        await waitUntilExecWorks(makeVm(record), { name: 'MULTIPASS_READY_TIMEOUT_MS', ms: scaleTimeout(MULTIPASS_READY_TIMEOUT_MS), what: `multipass exec to work in ${name}`, provider: PROVIDER, vm: name, code: 'VMPOOL_BOOT_TIMEOUT' })
      } catch (error) {
        await deleteInstance(name).catch(() => undefined)
        throw error
      }
      return record
    },

    async connect(record: VmRecord): Promise<Vm> {
      const name = validateVmName(record.name, PROVIDER)
      if (record.data.host !== undefined && record.data.host !== where) {
        throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation: 'connect', vm: name, message: `instance ${name} lives on ${String(record.data.host)}, but this provider runs multipass on ${where}`, hint: 'connect with the same multipassProvider options (host, port, user) that created it' })
      }
      const result = await multipass(['info', name, '--format', 'json'])
      if (result.exitCode !== 0) throw cliFailure(result, 'connect', name)
      const state = parseJsonOutput(infoSchema, result.stdout, 'multipass info --format json', PROVIDER).info[name]?.state
      if (state === 'Deleted') throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation: 'connect', vm: name, message: `instance ${name} is deleted (not yet purged) on ${runner.where}` })
      return makeVm(record)
    },

    delete: async (name: string) => deleteInstance(validateVmName(name, PROVIDER)),

    async list(): Promise<VmInfo[]> {
      const result = await multipass(['list', '--format', 'json'])
      if (result.exitCode !== 0) throw cliFailure(result, 'list')
      return parseJsonOutput(listSchema, result.stdout, 'multipass list --format json', PROVIDER)
        .list.filter((instance) => instance.state !== 'Deleted')
        .map((instance) => ({ name: instance.name, provider: PROVIDER, state: toVmState(instance.state) }))
    },

    async probe(): Promise<ProviderProbe> {
      try {
        const result = await multipass(['list', '--format', 'json'])
        if (result.exitCode !== 0) {
          const failure = cliFailure(result, 'probe')
          return { usable: false, reason: failure.shortMessage, hint: failure.hint, details: { where } }
        }
        const count = parseJsonOutput(listSchema, result.stdout, 'multipass list --format json', PROVIDER).list.length
        return { usable: true, reason: `multipassd answers on ${runner.where} (${count} instance${count === 1 ? '' : 's'})`, details: { where, binary: config.multipassBinary } }
      } catch (error) {
        return { usable: false, reason: isVmPoolError(error) ? error.shortMessage : String(error), hint: isVmPoolError(error) ? error.hint : MISSING_HINT, details: { where } }
      }
    },

    describe(record: VmRecord): KeptVmHelp {
      const name = validateVmName(record.name, PROVIDER)
      const on = typeof record.data.host === 'string' && record.data.host !== 'local' ? `   (on ${record.data.host})` : ''
      return { reach: `multipass shell ${name}${on}`, remove: `multipass delete --purge ${name}${on}` }
    },

    shell(record: VmRecord, command?: string[]): LocalCommand | undefined {
      const name = validateVmName(record.name, PROVIDER)
      // On a remote host the multipass CLI is reached through vm-pool's own SSH runner: exec only.
      if (typeof record.data.host === 'string' && record.data.host !== 'local') return undefined
      return { argv: command && command.length > 0 ? [config.multipassBinary, 'exec', name, '--', ...command] : [config.multipassBinary, 'shell', name] }
    },

    async close(): Promise<void> {
      await runner.close()
    },
  }
}
