import { request, type Dispatcher } from 'undici'
import { z } from 'zod'
import { VmPoolError, invalidOptions, isVmPoolError } from '../errors.js'
import { formatZodError } from '../config/zod-error.js'
import { abortedError, TIMED_OUT_EXIT_CODE } from '../transport/process-runner.js'
import { createDebug } from '../util/debug.js'
import { scaleTimeout, sleep, withTimeout } from '../util/timeouts.js'
import { validateVmName } from '../util/vm-name.js'
import { makeGuestExec } from '../transport/guest-exec-script.js'
import type { ExecOptions, ExecResult, ProviderProbe, Vm, VmInfo, VmProvider, VmRecord, VmSpec, VmState } from './vm-provider.js'

const PROVIDER = 'firecracker'
const debug = createDebug('vm-pool:firecracker')

/** From `POST /api/vms` until the VM is `running` and a first command ran. */
export const FIRECRACKER_BOOT_TIMEOUT_MS = 120_000
/** Between `GET /api/vms/{id}` polls while a VM boots. */
export const FIRECRACKER_POLL_INTERVAL_MS = 250
/** Headers and body of every call except execute, which gets its own `timeout_seconds` plus this. */
export const FIRECRACKER_REQUEST_TIMEOUT_MS = 30_000
/** `timeout_seconds` sent when exec has no `timeoutMs`: the API wants a limit. */
export const FIRECRACKER_DEFAULT_EXEC_TIMEOUT_SECONDS = 3_600
/** Added to the server-side `timeout_seconds`: the guest-side timeout should fire first. */
export const FIRECRACKER_EXEC_TIMEOUT_GRACE_SECONDS = 2
/** Retries after the first attempt, on connection errors and 5xx (never on 4xx). */
export const FIRECRACKER_MAX_RETRIES = 3
/** How long the `true` readiness probe of a booting VM may take before the next poll. */
export const FIRECRACKER_READY_PROBE_TIMEOUT_MS = 10_000
/** How long the second call that kills a timed-out or aborted command's process group may run, in seconds (the API's unit). */
export const FIRECRACKER_KILL_TIMEOUT_SECONDS = 30
/** First backoff delay; doubles on each retry. */
export const FIRECRACKER_RETRY_BASE_DELAY_MS = 200

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

interface CallOptions {
  body?: unknown
  operation: string
  vm?: string | undefined
  timeoutMs?: number
  signal?: AbortSignal | undefined
  /**
   * `idempotent`: retry on every connection error and 5xx. `once`: the call has effects (create,
   * execute), so retry only when the server cannot have acted on it: the connection was never made,
   * or 502/503 (a proxy or an overloaded server refusing the request).
   */
  retry: 'idempotent' | 'once'
}

const CONNECT_ERROR_CODES = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN'])
const CONNECTION_LOST_CODES = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED'])

/**
 * Firecracker microVMs through an fcctl-web style HTTP API (seed 002), on undici. The token lives only
 * in this closure: the provider object, its records and its errors never carry it, and response bodies
 * quoted in errors have it redacted.
 */
export function firecrackerProvider(options: FirecrackerProviderOptions = {}): VmProvider {
  const parsed = firecrackerProviderOptionsSchema.safeParse(options)
  if (!parsed.success) throw invalidOptions(`invalid firecrackerProvider options: ${formatZodError(parsed.error, options)}`, { provider: PROVIDER })
  const { token: tokenOption, dispatcher, url, vmType, agentId } = parsed.data
  const token = tokenOption ?? (process.env.FIRECRACKER_AUTH_TOKEN || undefined)
  const baseUrl = (url ?? (process.env.FIRECRACKER_API_URL || 'http://127.0.0.1:8080')).replace(/\/+$/, '')
  const defaultVmType = vmType ?? (process.env.FIRECRACKER_VM_TYPE || 'bionic-test')

  const redact = (text: string) => (token ? text.replaceAll(token, '[redacted]') : text)
  const httpError = (operation: string, vm: string | undefined, method: string, path: string, status: number, text: string) =>
    new VmPoolError({
      code: 'VMPOOL_HTTP_ERROR',
      provider: PROVIDER,
      operation,
      vm,
      message: `${method} ${path} answered HTTP ${status}: ${redact(text.trim().slice(0, 300)) || '(empty body)'}`,
      details: { method, path, status },
    })

  async function call(method: 'GET' | 'POST' | 'DELETE', path: string, callOptions: CallOptions): Promise<{ status: number; text: string }> {
    const { operation, vm } = callOptions
    if (!token) {
      throw invalidOptions('no Firecracker API token: pass the token option or set FIRECRACKER_AUTH_TOKEN', { provider: PROVIDER, operation, vm })
    }
    const timeoutMs = callOptions.timeoutMs ?? scaleTimeout(FIRECRACKER_REQUEST_TIMEOUT_MS)
    let lastProblem: { error?: unknown; status?: number; text?: string } = {}
    for (let attempt = 0; attempt <= FIRECRACKER_MAX_RETRIES; attempt++) {
      if (attempt > 0) {
        const delay = FIRECRACKER_RETRY_BASE_DELAY_MS * 2 ** (attempt - 1)
        debug('%s %s: retry %d in %d ms', method, path, attempt, delay)
        await sleep(delay, callOptions.signal).catch(() => undefined)
      }
      if (callOptions.signal?.aborted) throw abortedError({ signal: callOptions.signal, provider: PROVIDER, vm })
      try {
        const response = await request(`${baseUrl}${path}`, {
          method,
          headers: { authorization: `Bearer ${token}`, accept: 'application/json', ...(callOptions.body === undefined ? {} : { 'content-type': 'application/json' }) },
          body: callOptions.body === undefined ? undefined : JSON.stringify(callOptions.body),
          signal: callOptions.signal,
          headersTimeout: timeoutMs,
          bodyTimeout: timeoutMs,
          ...(dispatcher ? { dispatcher } : {}),
        })
        const text = await response.body.text()
        const status = response.statusCode
        debug('%s %s -> %d', method, path, status)
        if (status === 401 || status === 403) {
          // The body is not quoted: some servers echo the Authorization header they rejected.
          throw new VmPoolError({
            code: 'VMPOOL_AUTH_FAILED',
            provider: PROVIDER,
            operation,
            vm,
            message: `the Firecracker API at ${baseUrl} rejected the token (HTTP ${status} on ${method} ${path})`,
            hint: 'check FIRECRACKER_AUTH_TOKEN (or the token option): it may be expired, or signed with another JWT secret than fcctl-web uses',
            details: { method, path, status },
          })
        }
        const retryable = status >= 500 && (callOptions.retry === 'idempotent' || status === 502 || status === 503)
        if (!retryable) return { status, text }
        lastProblem = { status, text }
      } catch (error) {
        if (isVmPoolError(error)) throw error
        if (callOptions.signal?.aborted) throw abortedError({ signal: callOptions.signal, provider: PROVIDER, vm })
        const code = (error as { code?: string }).code ?? ''
        const retryable = CONNECT_ERROR_CODES.has(code) || (callOptions.retry === 'idempotent' && CONNECTION_LOST_CODES.has(code))
        debug('%s %s failed: %s', method, path, code || (error as Error).message)
        if (!retryable) {
          throw new VmPoolError({
            code: 'VMPOOL_HTTP_ERROR',
            provider: PROVIDER,
            operation,
            vm,
            message: `${method} ${baseUrl}${path} failed: ${redact((error as Error).message)}${code ? ` (${code})` : ''}`,
            hint: code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' ? 'the API did not answer in time; set VM_POOL_TIMEOUT_SCALE=2 on slow hosts' : undefined,
            cause: error,
          })
        }
        lastProblem = { error }
      }
    }
    if (lastProblem.status !== undefined) {
      const error = httpError(operation, vm, method, path, lastProblem.status, lastProblem.text ?? '')
      throw new VmPoolError({ code: 'VMPOOL_PROVIDER_UNAVAILABLE', provider: PROVIDER, operation, vm, message: `${error.shortMessage} (after ${FIRECRACKER_MAX_RETRIES} retries)`, hint: 'is fcctl-web healthy? Check its logs', details: error.details, cause: error })
    }
    const code = (lastProblem.error as { code?: string } | undefined)?.code
    throw new VmPoolError({
      code: 'VMPOOL_PROVIDER_UNAVAILABLE',
      provider: PROVIDER,
      operation,
      vm,
      message: `cannot reach the Firecracker API at ${baseUrl} (${code ?? 'connection error'}, after ${FIRECRACKER_MAX_RETRIES} retries)`,
      hint: 'is fcctl-web running? Set FIRECRACKER_API_URL (or the url option) to where it listens',
      cause: lastProblem.error,
    })
  }

  async function callJson<T>(schema: z.ZodType<T>, method: 'GET' | 'POST' | 'DELETE', path: string, callOptions: CallOptions, expect: (status: number) => boolean = (s) => s >= 200 && s < 300): Promise<T> {
    const { status, text } = await call(method, path, callOptions)
    if (!expect(status)) throw httpError(callOptions.operation, callOptions.vm, method, path, status, text)
    let data: unknown
    try {
      data = JSON.parse(text)
    } catch (error) {
      throw new VmPoolError({ code: 'VMPOOL_HTTP_ERROR', provider: PROVIDER, operation: callOptions.operation, vm: callOptions.vm, message: `${method} ${path} answered HTTP ${status} with something that is not JSON: ${redact(text.slice(0, 200))}`, cause: error })
    }
    const result = schema.safeParse(data)
    if (!result.success) throw new VmPoolError({ code: 'VMPOOL_HTTP_ERROR', provider: PROVIDER, operation: callOptions.operation, vm: callOptions.vm, message: `${method} ${path} answered unexpected JSON: ${formatZodError(result.error)}` })
    return result.data
  }

  const notFound = (name: string, operation: string) => new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: PROVIDER, operation, vm: name, message: `VM ${name} does not exist on ${baseUrl} (deleted, or never created)` })

  async function getVm(id: string, name: string, operation: string): Promise<ApiVm> {
    return callJson(vmSchema, 'GET', `/api/vms/${encodeURIComponent(id)}`, { operation, vm: name, retry: 'idempotent' }).catch((error: unknown) => {
      if (isVmPoolError(error, 'VMPOOL_HTTP_ERROR') && error.details?.status === 404) throw notFound(name, operation)
      throw error
    })
  }

  const listVms = async (): Promise<ApiVm[]> => (await callJson(vmListSchema, 'GET', '/api/vms', { operation: 'list', retry: 'idempotent' })).vms

  async function deleteById(id: string, name: string): Promise<void> {
    const { status, text } = await call('DELETE', `/api/vms/${encodeURIComponent(id)}`, { operation: 'delete', vm: name, retry: 'idempotent' })
    if (status === 404 || (status >= 200 && status < 300)) return
    throw httpError('delete', name, 'DELETE', `/api/vms/${id}`, status, text)
  }

  /** One execute call. The script is bash (the API's language); env, cwd and stdin are part of it. */
  async function execute(record: VmRecord, command: string | string[], execOptions: ExecOptions): Promise<ExecResult> {
    const id = String(record.data.id)
    const name = record.name
    if (execOptions.signal?.aborted) throw abortedError({ signal: execOptions.signal, provider: PROVIDER, vm: name })
    // The guest-side `timeout` ends the command (and the process group it leads) at timeoutMs; the
    // server's timeout_seconds, a little later, is the backstop for a guest that stopped answering.
    const { script, killScript } = makeGuestExec(command, { cwd: execOptions.cwd, env: execOptions.env, guestTimeoutMs: execOptions.timeoutMs })
    const timeoutSeconds = execOptions.timeoutMs === undefined ? FIRECRACKER_DEFAULT_EXEC_TIMEOUT_SECONDS : Math.ceil(execOptions.timeoutMs / 1000) + FIRECRACKER_EXEC_TIMEOUT_GRACE_SECONDS
    const run = (code: string, signal: AbortSignal | undefined, seconds: number) =>
      callJson(executeSchema, 'POST', '/api/llm/execute', {
        operation: 'exec',
        vm: name,
        retry: 'once',
        signal,
        timeoutMs: seconds * 1000 + scaleTimeout(FIRECRACKER_REQUEST_TIMEOUT_MS),
        body: { agent_id: agentId, language: 'bash', code, vm_id: id, timeout_seconds: seconds, ...(execOptions.cwd?.startsWith('/') ? { working_dir: execOptions.cwd } : {}) },
      }, (status) => status >= 200 && status < 300).catch((error: unknown) => {
        if (isVmPoolError(error, 'VMPOOL_HTTP_ERROR') && error.details?.status === 404) throw notFound(name, 'exec')
        throw error
      })
    // The API has no stdin: the input travels inside the script as a base64 heredoc.
    const code =
      execOptions.input === undefined
        ? `sh -c ${shellQuote(script)} </dev/null`
        : `base64 -d <<'VM_POOL_STDIN_EOF' | sh -c ${shellQuote(script)}\n${base64Lines(execOptions.input)}\nVM_POOL_STDIN_EOF`
    // A command killed by the server's timeout or left behind by an abort may have children in their own
    // process group (the wrapper's): kill that group with a second call.
    const killInGuest = () => run(killScript, undefined, Math.ceil(scaleTimeout(FIRECRACKER_KILL_TIMEOUT_SECONDS * 1000) / 1000)).catch(() => undefined)
    const started = performance.now()
    let response: z.infer<typeof executeSchema>
    try {
      response = await run(code, execOptions.signal, timeoutSeconds)
    } catch (error) {
      if (isVmPoolError(error, 'VMPOOL_EXEC_ABORTED')) await killInGuest()
      throw error
    }
    const durationMs = Math.round(performance.now() - started)
    const timedOut = execOptions.timeoutMs !== undefined && (response.timed_out === true || (response.exit_code === TIMED_OUT_EXIT_CODE && durationMs >= execOptions.timeoutMs))
    if (timedOut) await killInGuest()
    if (response.stdout) execOptions.onStdout?.(response.stdout)
    if (response.stderr) execOptions.onStderr?.(response.stderr)
    return { exitCode: timedOut ? TIMED_OUT_EXIT_CODE : response.exit_code, stdout: response.stdout, stderr: response.stderr, durationMs, timedOut }
  }

  const makeVm = (record: VmRecord): Vm => {
    const exec = (command: string | string[], execOptions: ExecOptions = {}) => execute(record, command, execOptions)
    const transferFailed = (operation: string, path: string, result: ExecResult) =>
      new VmPoolError({ code: 'VMPOOL_EXEC_FAILED', provider: PROVIDER, operation, vm: record.name, message: `${operation} ${JSON.stringify(path)} failed with exit code ${result.exitCode}: ${result.stderr.trim().slice(0, 300)}` })
    return {
      name: record.name,
      provider: PROVIDER,
      record,
      exec,
      async putFile(path, data) {
        const result = await exec(['sh', '-c', 'cat > "$1"', 'sh', path], { input: data })
        if (result.exitCode !== 0) throw transferFailed('putFile', path, result)
      },
      async getFile(path) {
        // Responses are JSON text: base64 keeps binary files intact.
        const result = await exec(['base64', '--', path])
        if (result.exitCode !== 0) throw transferFailed('getFile', path, result)
        return Buffer.from(result.stdout, 'base64')
      },
      async close() {},
      async [Symbol.asyncDispose]() {},
    }
  }

  return {
    name: PROVIDER,

    async create(spec: VmSpec): Promise<VmRecord> {
      const name = validateVmName(spec.name, PROVIDER)
      const type = spec.image ?? defaultVmType
      const created = await callJson(vmSchema, 'POST', '/api/vms', { operation: 'create', vm: name, retry: 'once', body: { vm_type: type, vm_name: name } }).catch((error: unknown) => {
        if (isVmPoolError(error, 'VMPOOL_HTTP_ERROR') && error.details?.status === 409) {
          throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `a VM named ${name} already exists on ${baseUrl}`, hint: `delete it first: vm-pool gc --provider firecracker --prefix ${name}`, cause: error })
        }
        throw error
      })
      const record: VmRecord = { name, provider: PROVIDER, createdAt: new Date().toISOString(), spec: structuredClone(spec), data: { id: created.id, vmType: type, url: baseUrl } }
      const bootMs = scaleTimeout(FIRECRACKER_BOOT_TIMEOUT_MS)
      const stop = new AbortController()
      const waitRunning = async () => {
        let status = created.status
        while (!stop.signal.aborted) {
          if (status === 'running') {
            const probe = await execute(record, 'true', { timeoutMs: scaleTimeout(FIRECRACKER_READY_PROBE_TIMEOUT_MS), signal: stop.signal }).catch((error: unknown) => (isVmPoolError(error, 'VMPOOL_HTTP_ERROR') ? undefined : Promise.reject(error)))
            if (probe?.exitCode === 0) return
          } else if (/^(failed|error|crashed|stopped|deleted)$/i.test(status)) {
            throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: PROVIDER, operation: 'create', vm: name, message: `VM ${name} (${created.id}) became ${status} while booting` })
          }
          await sleep(FIRECRACKER_POLL_INTERVAL_MS, stop.signal).catch(() => undefined)
          if (!stop.signal.aborted) status = (await getVm(created.id, name, 'create')).status
        }
      }
      try {
        await withTimeout(waitRunning(), { name: 'FIRECRACKER_BOOT_TIMEOUT_MS', ms: bootMs, what: `VM ${name} (${created.id}) to be running and execute a command`, provider: PROVIDER, vm: name, code: 'VMPOOL_BOOT_TIMEOUT' })
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
      if (!token) return { usable: false, reason: 'no API token', hint: 'set FIRECRACKER_AUTH_TOKEN (a JWT accepted by fcctl-web), or pass the token option', details: { url: baseUrl } }
      try {
        const { status } = await call('GET', '/health', { operation: 'probe', retry: 'idempotent' })
        if (status >= 200 && status < 300) return { usable: true, reason: `fcctl-web answers on ${baseUrl} and accepts the token`, details: { url: baseUrl, vmType: defaultVmType } }
        return { usable: false, reason: `GET /health answered HTTP ${status}`, details: { url: baseUrl } }
      } catch (error) {
        return { usable: false, reason: isVmPoolError(error) ? error.shortMessage : redact(String(error)), hint: isVmPoolError(error) ? error.hint : undefined, details: { url: baseUrl } }
      }
    },
  }
}

function toVmState(status: string): VmState {
  switch (status.toLowerCase()) {
    case 'running':
      return 'running'
    case 'starting':
    case 'creating':
    case 'booting':
    case 'pending':
      return 'starting'
    case 'stopped':
    case 'paused':
      return 'stopped'
    case 'failed':
    case 'error':
    case 'crashed':
      return 'dead'
    default:
      return 'unknown'
  }
}

function base64Lines(input: string | Buffer): string {
  return (Buffer.isBuffer(input) ? input : Buffer.from(input)).toString('base64').replace(/.{1,76}/g, '$&\n').trimEnd()
}

function shellQuote(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`
}
