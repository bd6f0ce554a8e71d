import { existsSync } from 'node:fs'
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { dirname, isAbsolute, join } from 'node:path'
import { z } from 'zod'
import { VmPoolError } from '../errors.js'
import { buildShellScript, quoteShellArg, toShellLine } from '../transport/shell.js'
import { runProcess, type RunProcessOptions } from '../transport/process-runner.js'
import { createDirectorySink, directoryFailed, GUEST_EXTRACT_SCRIPT, GUEST_PACK_SCRIPT } from '../transport/guest-directory.js'
import { connectTcp, FORWARD_HOST, startLocalForward } from '../transport/port-forward.js'
import { packDirectory } from '../transport/tar/tar-writer.js'
import { withExecLog } from './exec-log.js'
import { VmPortForwards } from './vm-port-forwards.js'
import { writeFileAtomic } from '../util/fs-atomic.js'
import { getStateDir } from '../util/state-dir.js'
import { sleep } from '../util/timeouts.js'
import { validateVmName } from '../util/vm-name.js'
import { parseProviderOptions } from './parse-provider-options.js'
import type { ExecOptions, ExecResult, KeptVmHelp, LocalCommand, ProviderProbe, Vm, VmInfo, VmProvider, VmRecord, VmSpec } from './vm-provider.js'

const PROVIDER = 'fake'

export const fakeProviderOptionsSchema = z
  .object({
    /** @default `VM_POOL_STATE_DIR` or `~/.cache/vm-pool` */
    stateDir: z.string().min(1).optional(),
    /** Simulated boot time of `create`, in milliseconds. @default 0 */
    bootDelayMs: z.number().int().min(0).default(0),
    /** Failure injection for tests. */
    faults: z
      .object({
        /** `true`: every create fails; a string: creates of names containing it fail. */
        create: z.union([z.boolean(), z.string()]).optional(),
        /** Exec of a command containing this string throws `VMPOOL_EXEC_FAILED`. */
        exec: z.string().min(1).optional(),
      })
      .strict()
      .default({}),
  })
  .strict()

export type FakeProviderOptions = z.input<typeof fakeProviderOptionsSchema>

/**
 * No VM at all: each "VM" is a sandbox directory on the host and exec runs `sh` there.
 * For tests and demos only — it isolates nothing. State lives under `<stateDir>/fake/` so other
 * processes (the CLI, Vitest workers) see and reach the same "VMs".
 */
export function fakeProvider(options: FakeProviderOptions = {}): VmProvider {
  const config = Object.freeze(parseProviderOptions(fakeProviderOptionsSchema, options, PROVIDER))
  // Resolved (and checked, getStateDir) on first use, once: not at construction, where the folder may not exist yet.
  let rootDir: string | undefined
  const root = () => (rootDir ??= join(getStateDir(config.stateDir), 'fake'))
  const vmDir = (name: string) => join(root(), name)
  const forwards = new VmPortForwards()

  const provider: VmProvider = {
    name: PROVIDER,

    async create(spec: VmSpec): Promise<VmRecord> {
      const name = validateVmName(spec.name, PROVIDER)
      const fault = config.faults.create
      if (fault === true || (typeof fault === 'string' && name.includes(fault))) {
        throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `injected create failure for ${name}` })
      }
      const dir = vmDir(name)
      await mkdir(root(), { recursive: true, mode: 0o700 })
      try {
        await mkdir(dir, { mode: 0o700 })
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
        throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `a VM named ${name} already exists`, hint: `delete it first: vm-pool gc --provider fake --prefix ${name}` })
      }
      await mkdir(join(dir, 'home'), { mode: 0o700 })
      if (config.bootDelayMs > 0) await sleep(config.bootDelayMs)
      const record: VmRecord = {
        name,
        provider: PROVIDER,
        createdAt: new Date().toISOString(),
        spec: { ...spec, labels: spec.labels ? { ...spec.labels } : undefined },
        data: { home: join(dir, 'home') },
      }
      if (record.spec.labels === undefined) delete record.spec.labels
      await writeFileAtomic(join(dir, 'record.json'), JSON.stringify(record, null, 2))
      return record
    },

    async connect(record: VmRecord): Promise<Vm> {
      const name = validateVmName(record.name, PROVIDER)
      if (!(await exists(join(vmDir(name), 'record.json')))) throw notFound(name, 'connect')
      return createFakeVm(record, vmDir(name), config.faults.exec, forwards)
    },

    /**
     * The sandbox is the VM: running while its record is there (what exec checks first). A synchronous stat:
     * the pool asks on every warm re-claim, and a thread-pool round trip costs several times the stat.
     */
    async isRunning(record: VmRecord): Promise<boolean> {
      return existsSync(join(vmDir(validateVmName(record.name, PROVIDER)), 'record.json'))
    },

    async delete(name: string): Promise<void> {
      validateVmName(name, PROVIDER)
      await forwards.closeVm(name)
      await rm(vmDir(name), { recursive: true, force: true })
    },

    async list(): Promise<VmInfo[]> {
      let names: string[]
      const dir = root() // outside the try: an unsafe state dir is refused (util/state-dir.ts), not read as "no VMs"
      try {
        names = await readdir(dir)
      } catch {
        return []
      }
      const infos: VmInfo[] = []
      for (const name of names.sort()) {
        try {
          const record = JSON.parse(await readFile(join(vmDir(name), 'record.json'), 'utf8')) as VmRecord
          infos.push({ name, provider: PROVIDER, state: 'running', createdAt: record.createdAt, labels: record.spec.labels, record })
        } catch {
          // still being created (no record yet) or half deleted: report what we know
          infos.push({ name, provider: PROVIDER, state: 'starting' })
        }
      }
      return infos
    },

    async probe(): Promise<ProviderProbe> {
      return { usable: true, reason: 'always usable: no VM, each "VM" is a sandbox directory on this host (tests and demos only)', details: { stateDir: root() } }
    },

    describe(record: VmRecord): KeptVmHelp {
      const home = typeof record.data.home === 'string' ? record.data.home : join(vmDir(validateVmName(record.name, PROVIDER)), 'home')
      // The VM's own directory (home's parent) and nothing else.
      return { reach: `cd ${home}   (a fake VM is a directory on this host)`, remove: `rm -rf ${quoteShellArg(dirname(home))}` }
    },

    shell(record: VmRecord, command?: string[]): LocalCommand {
      const home = typeof record.data.home === 'string' ? record.data.home : join(vmDir(validateVmName(record.name, PROVIDER)), 'home')
      // A shell on this host in the sandbox dir, with the variables exec sets: no isolation, as with exec.
      const env = { HOME: home, VM_POOL_VM: record.name }
      return command && command.length > 0 ? { argv: ['sh', '-c', toShellLine(command)], cwd: home, env } : { argv: [process.env.SHELL || 'sh'], cwd: home, env }
      },

    async close(): Promise<void> {
      await forwards.closeAll()
    },
  }
  return provider
}

function createFakeVm(record: VmRecord, dir: string, execFault: string | undefined, registry: VmPortForwards): Vm {
  const home = join(dir, 'home')
  const context = { provider: PROVIDER, vm: record.name }
  const ensureAlive = async (operation: string) => {
    if (!(await exists(join(dir, 'record.json')))) throw notFound(record.name, operation)
  }
  const resolvePath = (path: string) => (isAbsolute(path) ? path : join(home, path))
  /** `sh -c` in the VM's home, as a command in a real guest would run. */
  const runSh = (script: string, args: string[], options: Omit<RunProcessOptions, 'cwd' | 'env'>) =>
    runProcess('sh', ['-c', script, 'sh', ...args], { ...options, cwd: home, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, LANG: 'C.UTF-8', VM_POOL_VM: record.name }, ...context })
  const { forwards, release } = registry.open(record.name)
  const close = async () => release()
  const vm: Vm = {
    name: record.name,
    provider: PROVIDER,
    record,
    async exec(command: string | string[], options: ExecOptions = {}): Promise<ExecResult> {
      await ensureAlive('exec')
      const script = buildShellScript(command, options)
      if (execFault !== undefined && script.includes(execFault)) {
        throw new VmPoolError({ code: 'VMPOOL_EXEC_FAILED', provider: PROVIDER, operation: 'exec', vm: record.name, message: `injected exec failure (command contains ${JSON.stringify(execFault)})` })
      }
      const { cwd: _cwd, env: _env, ...rest } = options
      return runSh(script, [], rest)
    },
    async putFile(path: string, data: string | Buffer): Promise<void> {
      await ensureAlive('putFile')
      await writeFile(resolvePath(path), data)
    },
    async getFile(path: string): Promise<Buffer> {
      await ensureAlive('getFile')
      try {
        return await readFile(resolvePath(path))
      } catch (error) {
        // As on a real VM, where `cat` fails: the caller sees VMPOOL_EXEC_FAILED, not a host fs error.
        throw new VmPoolError({ code: 'VMPOOL_EXEC_FAILED', provider: PROVIDER, operation: 'getFile', vm: record.name, message: `getFile ${JSON.stringify(path)} failed: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, cause: error })
      }
    },
    // Through the same guest-side `tar` scripts as real VMs, so the path checks of the extraction run too.
    async putDirectory(localDir: string, guestDir: string): Promise<void> {
      await ensureAlive('putDirectory')
      const result = await runSh(GUEST_EXTRACT_SCRIPT, [guestDir], { stdin: packDirectory(localDir) })
      if (result.exitCode !== 0) throw directoryFailed('putDirectory', guestDir, result, context)
    },
    async getDirectory(guestDir: string, localDir: string): Promise<void> {
      await ensureAlive('getDirectory')
      const sink = createDirectorySink(localDir, guestDir, context)
      let result: ExecResult
      try {
        result = await runSh(GUEST_PACK_SCRIPT, [guestDir], { onStdoutData: (chunk) => sink.write(chunk) })
      } catch (error) {
        await sink.abort()
        throw error
      }
      await sink.finish(result)
    },
    // The "guest" shares this machine's network: its port N is 127.0.0.1:N here.
    async forwardPort(guestPort, options = {}) {
      await ensureAlive('forwardPort')
      return forwards.track(await startLocalForward({ ...options, guestPort, ...context, connect: () => connectTcp(FORWARD_HOST, guestPort) }))
    },
    close,
    [Symbol.asyncDispose]: close,
  }
  return withExecLog(vm)
}

function notFound(name: string, operation: string): VmPoolError {
  return new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation, vm: name, message: `VM ${name} does not exist (deleted, or never created)` })
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch {
    return false
  }
}
