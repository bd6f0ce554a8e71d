import type { Dispatcher } from 'undici'
import { z } from 'zod'
import { VmPoolError, invalidOptions, isVmPoolError } from '../errors.js'
import type { CommandRunOptions } from '../transport/command-runner.js'
import { TIMED_OUT_EXIT_CODE } from '../transport/process-runner.js'
import { normalizeMaxOutputBytes, OutputCapture } from '../transport/output-capture.js'
import { quoteShellArg, toShellLine } from '../transport/shell.js'
import { scaleTimeout, sleep, withTimeout } from '../util/timeouts.js'
import { validateVmName } from '../util/vm-name.js'
import { createCliGuestVm } from './cli-guest-vm.js'
import { createFirecrackerClient, FIRECRACKER_REQUEST_TIMEOUT_MS, isHttpStatus, type FirecrackerClient } from './firecracker/firecracker-client.js'
import { parseProviderOptions } from './parse-provider-options.js'
import { makeVmStateMap } from './vm-state-map.js'
import type { ExecResult, KeptVmHelp, ProviderProbe, Vm, VmInfo, VmProvider, VmRecord, VmSpec } from './vm-provider.js'
import { READY_PROBE_TIMEOUT_MS } from './wait-until-exec-works.js'

export { FIRECRACKER_MAX_RETRIES, FIRECRACKER_REQUEST_TIMEOUT_MS } from './firecracker/firecracker-client.js'

const PROVIDER = 'firecracker'

/** From `POST /api/vms` until the VM is `running` and a first command ran. */
export const FIRECRACKER_BOOT_TIMEOUT_MS = 120_000
/** Between `GET /api/vms/{id}` polls while a VM boots. */
export const FIRECRACKER_POLL_INTERVAL_MS = 250
/** `timeout_seconds` sent when exec has no `timeoutMs`: the API wants a limit. */
export const FIRECRACKER_DEFAULT_EXEC_TIMEOUT_SECONDS = 3_600
/** Added to the server-side `timeout_seconds`: the guest-side timeout should fire first. */
export const FIRECRACKER_EXEC_TIMEOUT_GRACE_SECONDS = 2
/**
 * After `timeout_seconds`, how long the execute answer may take before exec stops waiting and reports
 * a timeout (a detached child of the command can keep the server's output, and so its answer, open).
 * Scaled by VM_POOL_TIMEOUT_SCALE; exec without `timeoutMs` waits FIRECRACKER_REQUEST_TIMEOUT_MS instead.
 */
export const FIRECRACKER_EXEC_ANSWER_GRACE_MS = 5_000

export const firecrackerProviderOptionsSchema = z
  .object({
    /** Base URL of the fcctl-web API. @default `FIRECRACKER_API_URL`, else `http://127.0.0.1:8080` */
    url: z.url({ protocol: /^https?$/ }).optional(),
    /** Bearer token (JWT). Kept in a closure: never logged, never in an error or a dump. @default `FIRECRACKER_AUTH_TOKEN` */
    token: z.string().min(1).optional(),
    /** `vm_type` for `POST /api/vms`; `VmSpec.image` wins. @default `FIRECRACKER_VM_TYPE`, else `bionic-test` */
    vmType: z.string().min(1).optional(),
    /** `agent_id` sent with every execute call. @default 'vm-pool' */
    agentId: z.string().min(1).default('vm-pool'),
    /** An undici Dispatcher (Agent, Pool, MockAgent, ProxyAgent) for every call. @default undici's global dispatcher */
    dispatcher: z.custom<Dispatcher>((value) => typeof value === 'object' && value !== null && typeof (value as Dispatcher).dispatch === 'function', 'expected an undici Dispatcher').optional(),
  })
  .strict()

export type FirecrackerProviderOptions = z.input<typeof firecrackerProviderOptionsSchema>

const vmSchema = z.looseObject({ id: z.string(), name: z.string(), vm_type: z.string().optional(), status: z.string(), created_at: z.string().optional() })
const vmListSchema = z.looseObject({ vms: z.array(vmSchema) })
const executeSchema = z.looseObject({
  execution_id: z.string().optional(),
  exit_code: z.number().int(),
  stdout: z.string().default(''),
  stderr: z.string().default(''),
  timed_out: z.boolean().optional(),
})
type ApiVm = z.infer<typeof vmSchema>

const toVmState = makeVmStateMap({ running: ['running'], starting: ['starting', 'creating', 'booting', 'pending'], stopped: ['stopped', 'paused'], dead: ['failed', 'error', 'crashed'] })
const FAILED_WHILE_BOOTING = /^(failed|error|crashed|stopped|deleted)$/i

/**
 * Firecracker microVMs through an fcctl-web style HTTP API (firecracker/firecracker-client.ts does the
 * calls). Commands go through the API's execute call with the guest-exec wrapper every CLI/API
 * provider shares (cli-guest-vm.ts). The token lives only in the client's closure: the provider
 * object, its records and its errors never carry it.
 */
export function firecrackerProvider(options: FirecrackerProviderOptions = {}): VmProvider {
  const { token, dispatcher, url, vmType, agentId } = parseProviderOptions(firecrackerProviderOptionsSchema, options, PROVIDER)
  const client = createFirecrackerClient({
    baseUrl: (url ?? (process.env.FIRECRACKER_API_URL || 'http://127.0.0.1:8080')).replace(/\/+$/, ''),
    token: token ?? (process.env.FIRECRACKER_AUTH_TOKEN || undefined),
    dispatcher,
  })
  const { baseUrl } = client
  const defaultVmType = vmType ?? (process.env.FIRECRACKER_VM_TYPE || 'bionic-test')

  const notFound = (name: string, operation: string) => new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation, vm: name, message: `VM ${name} does not exist on ${baseUrl} (deleted, or never created)` })
  const mapNotFound = (name: string, operation: string) => (error: unknown) => Promise.reject(isHttpStatus(error, 404) ? notFound(name, operation) : error)

  const getVm = (id: string, name: string, operation: string): Promise<ApiVm> =>
    client.callJson(vmSchema, 'GET', `/api/vms/${encodeURIComponent(id)}`, { operation, vm: name, retry: 'idempotent' }).catch(mapNotFound(name, operation))

  const listVms = async (): Promise<ApiVm[]> => (await client.callJson(vmListSchema, 'GET', '/api/vms', { operation: 'list', retry: 'idempotent' })).vms

  async function deleteById(id: string, name: string): Promise<void> {
    const path = `/api/vms/${encodeURIComponent(id)}`
    const { status, text } = await client.call('DELETE', path, { operation: 'delete', vm: name, retry: 'idempotent' })
    if (status === 404 || (status >= 200 && status < 300)) return
    throw client.httpError('delete', name, 'DELETE', path, status, text)
  }

  const makeVm = (record: VmRecord): Vm =>
    createCliGuestVm({
      record,
      provider: PROVIDER,
      runInGuest: (argv, runOptions) => execute(client, { record, agentId, argv, runOptions }).catch(mapNotFound(record.name, 'exec')),
      // The server's timeout_seconds is the backstop: a little after the guest-side `timeout`.
      backstopGraceMs: FIRECRACKER_EXEC_TIMEOUT_GRACE_SECONDS * 1000,
      forwardPortUnsupported: async (guestPort) => ({
        message: `the Firecracker API has no port forwarding: guest port ${guestPort} of ${record.name} is not forwarded`,
        hint: `the microVM has an address on the network of the machine running fcctl-web (GET ${baseUrl}/api/vms/${encodeURIComponent(String(record.data.id))} may show it): reach port ${guestPort} there, e.g. with \`ssh -L\` to that machine`,
      }),
    })

  return {
    name: PROVIDER,

    async create(spec: VmSpec): Promise<VmRecord> {
      const name = validateVmName(spec.name, PROVIDER)
      const type = spec.image ?? defaultVmType
      const created = await client.callJson(vmSchema, 'POST', '/api/vms', { operation: 'create', vm: name, retry: 'once', body: { vm_type: type, vm_name: name } }).catch((error: unknown) => {
        if (!isHttpStatus(error, 409)) throw error
        throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `a VM named ${name} already exists on ${baseUrl}`, hint: `delete it first: vm-pool gc --provider firecracker --prefix ${name}`, cause: error })
      })
      const record: VmRecord = { name, provider: PROVIDER, createdAt: new Date().toISOString(), spec: structuredClone(spec), data: { id: created.id, vmType: type, url: baseUrl } }
      const vm = makeVm(record)
      const stop = new AbortController()
      const waitRunning = async () => {
        let status = created.status
        while (!stop.signal.aborted) {
          if (status === 'running') {
            // A VM that says `running` may not execute yet (HTTP 409): poll again.
            const probe = await vm.exec('true', { timeoutMs: scaleTimeout(READY_PROBE_TIMEOUT_MS), signal: stop.signal }).catch((error: unknown) => (isVmPoolError(error, 'VMPOOL_HTTP_ERROR') ? undefined : Promise.reject(error)))
            if (probe?.exitCode === 0) return
          } else if (FAILED_WHILE_BOOTING.test(status)) {
            throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `VM ${name} (${created.id}) became ${status} while booting` })
          }
          await sleep(FIRECRACKER_POLL_INTERVAL_MS, stop.signal).catch(() => undefined)
          if (!stop.signal.aborted) status = (await getVm(created.id, name, 'create')).status
        }
      }
      try {
        await withTimeout(waitRunning(), { name: 'FIRECRACKER_BOOT_TIMEOUT_MS', ms: scaleTimeout(FIRECRACKER_BOOT_TIMEOUT_MS), what: `VM ${name} (${created.id}) to be running and execute a command`, provider: PROVIDER, vm: name, code: 'VMPOOL_BOOT_TIMEOUT' })
      } catch (error) {
        stop.abort()
        // Never leak a VM that did not come up.
        await deleteById(created.id, name).catch(() => undefined)
        throw error
      } finally {
        stop.abort()
      }
      return record
    },

    async connect(record: VmRecord): Promise<Vm> {
      const name = validateVmName(record.name, PROVIDER)
      if (typeof record.data.id !== 'string') throw invalidOptions(`record of ${name} has no Firecracker VM id`, { provider: PROVIDER, vm: name })
      await getVm(record.data.id, name, 'connect')
      return makeVm(record)
    },

    async delete(name: string): Promise<void> {
      validateVmName(name, PROVIDER)
      for (const vm of (await listVms()).filter((candidate) => candidate.name === name)) await deleteById(vm.id, name)
    },

    async list(): Promise<VmInfo[]> {
      return (await listVms()).map((vm) => ({
        name: vm.name,
        provider: PROVIDER,
        state: toVmState(vm.status),
        ...(vm.created_at ? { createdAt: vm.created_at } : {}),
        ...(vm.created_at ? { record: { name: vm.name, provider: PROVIDER, createdAt: vm.created_at, spec: { name: vm.name, ...(vm.vm_type ? { image: vm.vm_type } : {}) }, data: { id: vm.id, vmType: vm.vm_type ?? defaultVmType, url: baseUrl } } } : {}),
      }))
    },

    async probe(): Promise<ProviderProbe> {
      if (!client.hasToken) return { usable: false, reason: 'no API token', hint: 'set FIRECRACKER_AUTH_TOKEN (a JWT accepted by fcctl-web), or pass the token option', details: { url: baseUrl } }
      try {
        const { status } = await client.call('GET', '/health', { operation: 'probe', retry: 'idempotent' })
        if (status >= 200 && status < 300) return { usable: true, reason: `fcctl-web answers on ${baseUrl} and accepts the token`, details: { url: baseUrl, vmType: defaultVmType } }
        return { usable: false, reason: `GET /health answered HTTP ${status}`, details: { url: baseUrl } }
      } catch (error) {
        return { usable: false, reason: isVmPoolError(error) ? error.shortMessage : client.redact(String(error)), hint: isVmPoolError(error) ? error.hint : undefined, details: { url: baseUrl } }
      }
    },

    describe: (record) => describeFirecrackerVm(record, baseUrl, agentId),
  }
}

interface ExecuteCall {
  record: VmRecord
  agentId: string
  argv: string[]
  runOptions: CommandRunOptions
}

/**
 * One execute call: cli-guest-vm's `runInGuest`. The API takes bash code and has no stdin, so the
 * input travels inside the code as a base64 heredoc. With a `timeoutMs` (the backstop), an answer
 * that does not come within FIRECRACKER_EXEC_ANSWER_GRACE_MS after it is reported as a timeout.
 */
async function execute(client: FirecrackerClient, { record, agentId, argv, runOptions }: ExecuteCall): Promise<ExecResult> {
  const { input, timeoutMs, signal } = runOptions
  const line = toShellLine(argv)
  const code = input === undefined ? `${line} </dev/null` : `base64 -d <<'VM_POOL_STDIN_EOF' | ${line}\n${base64Lines(input)}\nVM_POOL_STDIN_EOF`
  const seconds = timeoutMs === undefined ? FIRECRACKER_DEFAULT_EXEC_TIMEOUT_SECONDS : Math.ceil(timeoutMs / 1000)
  const answerGraceMs = scaleTimeout(timeoutMs === undefined ? FIRECRACKER_REQUEST_TIMEOUT_MS : FIRECRACKER_EXEC_ANSWER_GRACE_MS)
  const started = performance.now()
  const body = { agent_id: agentId, language: 'bash', code, vm_id: String(record.data.id), timeout_seconds: seconds }
  try {
    const response = await client.callJson(executeSchema, 'POST', '/api/llm/execute', { operation: 'exec', vm: record.name, retry: 'once', signal, timeoutMs: seconds * 1000 + answerGraceMs, body })
    if (response.stdout) runOptions.onStdout?.(response.stdout)
    if (response.stderr) runOptions.onStderr?.(response.stderr)
    // The API answers with all the output at once; the result keeps the same head and tail as other providers.
    const maxBytes = normalizeMaxOutputBytes(runOptions.maxOutputBytes)
    const stdout = new OutputCapture(maxBytes)
    const stderr = new OutputCapture(maxBytes)
    stdout.push(response.stdout)
    stderr.push(response.stderr)
    const result: ExecResult = { exitCode: response.exit_code, stdout: stdout.text('stdout'), stderr: stderr.text('stderr'), durationMs: Math.round(performance.now() - started), timedOut: response.timed_out === true }
    if (stdout.droppedBytes > 0) result.stdoutDroppedBytes = stdout.droppedBytes
    if (stderr.droppedBytes > 0) result.stderrDroppedBytes = stderr.droppedBytes
    return result
  } catch (error) {
    const code = isVmPoolError(error, 'VMPOOL_HTTP_ERROR') ? error.details?.code : undefined
    if (timeoutMs === undefined || (code !== 'UND_ERR_HEADERS_TIMEOUT' && code !== 'UND_ERR_BODY_TIMEOUT')) throw error
    return { exitCode: TIMED_OUT_EXIT_CODE, stdout: '', stderr: '', durationMs: Math.round(performance.now() - started), timedOut: true }
  }
}

/** curl lines for one VM, by its id; the token by its variable name only, never its value. */
function describeFirecrackerVm(record: VmRecord, baseUrl: string, agentId: string): KeptVmHelp {
  const url = typeof record.data.url === 'string' ? record.data.url : baseUrl
  const id = String(record.data.id)
  const auth = '-H "Authorization: Bearer $FIRECRACKER_AUTH_TOKEN"'
  const request = JSON.stringify({ agent_id: agentId, language: 'bash', code: 'uname -a', vm_id: id, timeout_seconds: 60 })
  return {
    reach: `curl -sS ${auth} -H 'content-type: application/json' -d ${quoteShellArg(request)} ${quoteShellArg(`${url}/api/llm/execute`)}   (no shell: each call runs one bash snippet)`,
    remove: `curl -sS -X DELETE ${auth} ${quoteShellArg(`${url}/api/vms/${encodeURIComponent(id)}`)}`,
  }
}

function base64Lines(input: string | Buffer): string {
  return (Buffer.isBuffer(input) ? input : Buffer.from(input)).toString('base64').replace(/.{1,76}/g, '$&\n').trimEnd()
}
