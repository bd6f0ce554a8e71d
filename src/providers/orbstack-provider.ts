import { z } from 'zod'
import { VmPoolError, isVmPoolError } from '../errors.js'
import { scaleTimeout } from '../util/timeouts.js'
import { validateImageName, validateVmName } from '../util/vm-name.js'
import { quoteShellArg } from '../transport/shell.js'
import { createCliGuestVm } from './cli-guest-vm.js'
import { waitUntilExecWorks } from './wait-until-exec-works.js'
import { createLocalCommandRunner } from '../transport/command-runner.js'
import { parseProviderOptions } from './parse-provider-options.js'
import { makeVmStateMap } from './vm-state-map.js'
import type { ExecResult, KeptVmHelp, LocalCommand, ProviderProbe, Vm, VmInfo, VmProvider, VmRecord, VmSpec } from './vm-provider.js'
import { parseJsonOutput } from '../config/parse-json-output.js'

const PROVIDER = 'orbstack'

/** `orbctl create` pulls the image on first use, then boots the machine. */
export const ORBSTACK_CREATE_TIMEOUT_MS = 300_000
/** After create: until `orbctl run` executes a command in the new machine. */
export const ORBSTACK_READY_TIMEOUT_MS = 60_000
/** list / info / delete / status. */
export const ORBSTACK_CLI_TIMEOUT_MS = 60_000

export const orbstackProviderOptionsSchema = z
  .object({
    /** Default `DISTRO[:VERSION]` for `orbctl create`; `VmSpec.image` wins. @default 'ubuntu' */
    image: z.string().regex(/^[a-z0-9][a-z0-9._-]*(:[A-Za-z0-9._-]+)?$/, 'expected DISTRO[:VERSION], e.g. ubuntu:22.04').default('ubuntu'),
    /** User commands run as (`orbctl run -u USER`). @default the machine's default user */
    user: z.string().regex(/^[a-z_][a-z0-9_-]*$/, 'expected a Linux user name').optional(),
    /** The orbctl executable (a name on PATH or a path). @default 'orbctl' */
    orbctlBinary: z.string().min(1).default('orbctl'),
  })
  .strict()

export type OrbstackProviderOptions = z.input<typeof orbstackProviderOptionsSchema>

const orbMachineSchema = z.looseObject({
  id: z.string().optional(),
  name: z.string(),
  state: z.string(),
  image: z.looseObject({ distro: z.string().optional(), version: z.string().optional(), arch: z.string().optional() }).optional(),
})
type OrbMachine = z.infer<typeof orbMachineSchema>
const toVmState = makeVmStateMap({ running: ['running'], starting: ['starting', 'creating'], stopped: ['stopped', 'stopping'] })

/**
 * OrbStack Linux machines through `orbctl`. OrbStack has no labels: ownership is carried by
 * the machine name (`vitest-worker-<runId>-<slot>`), which is what `vm-pool gc` sweeps. CPU, memory and
 * disk are shared by all OrbStack machines, so those spec fields are ignored.
 */
export function orbstackProvider(options: OrbstackProviderOptions = {}): VmProvider {
  const config = Object.freeze(parseProviderOptions(orbstackProviderOptionsSchema, options, PROVIDER))
  const runner = createLocalCommandRunner({ provider: PROVIDER, missingHint: 'install OrbStack (https://orbstack.dev), or set orbctlBinary' })
  const orbctl = (args: string[], input?: string) => runner.run([config.orbctlBinary, ...args], { timeoutMs: scaleTimeout(ORBSTACK_CLI_TIMEOUT_MS), input })

  const isNotFound = (result: ExecResult, name: string) => result.stderr.includes(`machine not found: ${name}`)
  const cliFailure = (result: ExecResult, operation: string, name?: string): VmPoolError => {
    const stderr = result.stderr.trim().slice(0, 500)
    if (/not running|cannot connect|connection refused/i.test(stderr)) {
      return new VmPoolError({ code: 'VMPOOL_PROVIDER_UNAVAILABLE', provider: PROVIDER, operation, vm: name, message: `OrbStack is not running: ${stderr}`, hint: 'start OrbStack (open -a OrbStack, or orbctl start)', details: { exitCode: result.exitCode } })
    }
    if (name !== undefined && isNotFound(result, name)) {
      return new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation, vm: name, message: `machine ${name} does not exist (deleted, or never created)` })
    }
    const code = operation === 'create' ? 'VMPOOL_CREATE_FAILED' : operation === 'delete' ? 'VMPOOL_DELETE_FAILED' : 'VMPOOL_EXEC_FAILED'
    return new VmPoolError({ code, provider: PROVIDER, operation, vm: name, message: `orbctl ${operation} failed with exit code ${result.exitCode}: ${stderr || '(no output)'}`, details: { exitCode: result.exitCode } })
  }

  const listMachines = async (): Promise<OrbMachine[]> => {
    const result = await orbctl(['list', '-f', 'json'])
    if (result.exitCode !== 0) throw cliFailure(result, 'list')
    return parseJsonOutput(z.array(orbMachineSchema), result.stdout, 'orbctl list -f json', PROVIDER)
  }

  const makeVm = (record: VmRecord): Vm =>
    createCliGuestVm({
      record,
      provider: PROVIDER,
      runInGuest: (argv, runOptions) => runner.run([config.orbctlBinary, 'run', '-m', record.name, ...(config.user ? ['-u', config.user] : []), ...argv], runOptions),
      // `orbctl run` reports its own failures with exit 1; a command may exit 1 too, so look at the message.
      classifyFailure: (result, operation) => (result.exitCode !== 0 && (isNotFound(result, record.name) || /^OrbStack is not running/m.test(result.stderr)) ? cliFailure(result, operation, record.name) : undefined),
      // orbctl has no port forwarding: OrbStack gives every machine a name the Mac resolves.
      forwardPortUnsupported: async (guestPort) => ({
        message: `orbctl cannot forward ports: guest port ${guestPort} of ${record.name} is not forwarded`,
        hint: `OrbStack makes the machine reachable from the Mac at ${record.name}.orb.local: connect to ${record.name}.orb.local:${guestPort} (the server must listen on 0.0.0.0 in the machine)`,
      }),
    })

  return {
    name: PROVIDER,

    async create(spec: VmSpec): Promise<VmRecord> {
      const name = validateVmName(spec.name, PROVIDER)
      const image = validateImageName(spec.image ?? config.image, PROVIDER)
      const result = await runner.run([config.orbctlBinary, 'create', image, name], { timeoutMs: scaleTimeout(ORBSTACK_CREATE_TIMEOUT_MS) })
      if (result.timedOut) {
        await orbctl(['delete', '-f', name]).catch(() => undefined)
        throw new VmPoolError({ code: 'VMPOOL_BOOT_TIMEOUT', provider: PROVIDER, operation: 'create', vm: name, message: `orbctl create did not finish within ${scaleTimeout(ORBSTACK_CREATE_TIMEOUT_MS)} ms (ORBSTACK_CREATE_TIMEOUT_MS)`, hint: 'set VM_POOL_TIMEOUT_SCALE=2 (or higher) when images are pulled over a slow network' })
      }
      if (result.exitCode !== 0) throw cliFailure(result, 'create', name)
      const record: VmRecord = { name, provider: PROVIDER, createdAt: new Date().toISOString(), spec: structuredClone(spec), data: { image, ...(config.user ? { user: config.user } : {}) } }
      const vm = makeVm(record)
      const readyMs = scaleTimeout(ORBSTACK_READY_TIMEOUT_MS)
      try {
        await waitUntilExecWorks(vm, { name: 'ORBSTACK_READY_TIMEOUT_MS', ms: readyMs, what: `a command to run in machine ${name}`, provider: PROVIDER, vm: name, code: 'VMPOOL_BOOT_TIMEOUT' })
      } catch (error) {
        // Never leak a half-created machine.
        await orbctl(['delete', '-f', name]).catch(() => undefined)
        throw error
      }
      return record
    },

    async connect(record: VmRecord): Promise<Vm> {
      const name = validateVmName(record.name, PROVIDER)
      const result = await orbctl(['info', name, '-f', 'json'])
      if (result.exitCode !== 0) throw cliFailure(result, 'connect', name)
      return makeVm(record)
    },

    async delete(name: string): Promise<void> {
      validateVmName(name, PROVIDER)
      const result = await orbctl(['delete', '-f', name])
      if (result.exitCode === 0 || isNotFound(result, name)) return
      throw cliFailure(result, 'delete', name)
    },

    async list(): Promise<VmInfo[]> {
      return (await listMachines()).map((machine) => ({ name: machine.name, provider: PROVIDER, state: toVmState(machine.state) }))
    },

    async probe(): Promise<ProviderProbe> {
      try {
        const status = await orbctl(['status'])
        if (status.exitCode === 0 && status.stdout.trim() === 'Running') {
          const machines = await listMachines()
          return { usable: true, reason: `OrbStack is running (${machines.length} machine${machines.length === 1 ? '' : 's'})`, details: { binary: config.orbctlBinary } }
        }
        return { usable: false, reason: `OrbStack is not running (orbctl status: ${(status.stdout.trim() || status.stderr.trim()).slice(0, 200)})`, hint: 'start OrbStack (orbctl start)' }
      } catch (error) {
        return { usable: false, reason: isVmPoolError(error) ? error.shortMessage : String(error), hint: 'install OrbStack (macOS only: https://orbstack.dev), or set orbctlBinary' }
      }
    },

    describe(record: VmRecord): KeptVmHelp {
      const name = validateVmName(record.name, PROVIDER)
      const user = typeof record.data.user === 'string' ? ` -u ${quoteShellArg(record.data.user)}` : ''
      return { reach: `orb -m ${name}${user}`, remove: `orbctl delete -f ${name}` }
    },

    shell(record: VmRecord, command?: string[]): LocalCommand {
      const name = validateVmName(record.name, PROVIDER)
      const user = typeof record.data.user === 'string' ? ['-u', record.data.user] : []
      return { argv: [config.orbctlBinary, 'run', '-m', name, ...user, ...(command && command.length > 0 ? command : [])] }
    },
  }
}
