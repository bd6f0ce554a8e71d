import { parseCommandArgs, UsageError, type CliCommand } from '../cli-command.js'

/**
 * The server is the protocol edge (src/protocol/), beside cli/ rather than below it: edges never import
 * each other (docs/architecture.md), so this command loads it by path at run time and shares nothing
 * with it but plain data and the process's streams.
 */
const SERVER_MODULE = new URL('../../protocol/protocol-server.js', import.meta.url)
/**
 * After serving, the helper exits even if something still holds the process: an exec that could not be
 * cancelled (a plain exec on the fake provider is a host process). Its runner is gone and its VMs are handed back.
 */
export const HELPER_EXIT_GRACE_MS = 1_000

interface ProtocolServerModule {
  serveProtocol(options: {
    input: NodeJS.ReadableStream & { destroy?(): void }
    output: NodeJS.WritableStream
    env: NodeJS.ProcessEnv
    parentPid?: number
    signal?: AbortSignal
    log?: (line: string) => void
  }): Promise<number>
}

export const protocolCommand: CliCommand = {
  name: 'protocol',
  summary: 'serve the pool to another test runner (pytest, ...) as JSON lines on stdio',
  help: `Usage: vm-pool protocol [--parent-pid PID]

A helper for test runners that are not Vitest (the pytest plugin in python/, a shell or Go client):
it speaks JSON lines on stdin/stdout — requests with ids, answers, streamed exec output — and holds ONE
pool for its runner process: acquire(key) / fresh(spec) / exec / putFile / getFile / forwardPort /
reset / release / drain, after a hello. The messages are in docs/protocol.md.

The helper stops when its runner goes: stdin closes, or the runner's pid (--parent-pid, or the pid
sent in hello, else this process's parent) stops running. VMs the runner did not hand back with
drain are deleted then; if the helper itself is killed, the pool's reaper deletes them.

Options:
  --parent-pid PID   the runner process to watch (default: the parent of this process)

Environment (defaults for hello's pool):
  VM_POOL_PROVIDER, VM_POOL_PROVIDER_OPTIONS, VM_POOL_STATE_DIR, VM_POOL_TIMEOUT_SCALE, DEBUG=vm-pool:protocol
`,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, { 'parent-pid': { type: 'string' } })
    if (positionals.length > 0) throw new UsageError(`unexpected arguments: ${positionals.join(' ')}`)
    const raw = values['parent-pid']
    const parentPid = raw === undefined ? undefined : Number(raw)
    if (parentPid !== undefined && (!Number.isInteger(parentPid) || parentPid <= 0)) throw new UsageError(`--parent-pid must be a positive integer, got ${JSON.stringify(raw)}`)
    const { serveProtocol } = (await import(SERVER_MODULE.href)) as ProtocolServerModule
    const code = await serveProtocol({
      input: process.stdin,
      output: io.stdout,
      env: io.env,
      ...(parentPid !== undefined ? { parentPid } : {}),
      signal: io.signal,
      log: (line) => io.stderr.write(`${line}\n`),
    })
    setTimeout(() => process.exit(code), HELPER_EXIT_GRACE_MS).unref()
    return code
  },
}
