import type { Dispatcher, RetryAgent } from 'undici'
import type { z } from 'zod'
import { formatZodError } from '../../config/zod-error.js'
import { VmPoolError, invalidOptions, isVmPoolError } from '../../errors.js'
import { abortedError } from '../../transport/process-runner.js'
import { createDebug } from '../../util/debug.js'
import { lazyModule } from '../../util/lazy-module.js'
import { scaleTimeout } from '../../util/timeouts.js'

const undici = lazyModule<typeof import('undici')>('undici')

const PROVIDER = 'firecracker'
const debug = createDebug('vm-pool:firecracker')

/** Headers and body of every call except execute, which gets its own `timeout_seconds` plus a grace. */
export const FIRECRACKER_REQUEST_TIMEOUT_MS = 30_000
/** Retries after the first attempt, on connection errors and 5xx (never on 4xx). */
export const FIRECRACKER_MAX_RETRIES = 3
/** First backoff delay; doubles on each retry. */
export const FIRECRACKER_RETRY_BASE_DELAY_MS = 200
/** Longest wait between two attempts, also when the server's `Retry-After` asks for more. */
export const FIRECRACKER_RETRY_MAX_DELAY_MS = 5_000
/** Most characters of a response body quoted in an error, counted AFTER the token was redacted. */
export const QUOTED_BODY_MAX_CHARS = 300

/** Connection never made: no call can have reached the server. */
const CONNECT_ERROR_CODES = ['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN']
/** Connection lost mid-call: the server may have acted. */
const CONNECTION_LOST_CODES = ['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']
const SERVER_ERROR_STATUSES = Array.from({ length: 100 }, (_, i) => 500 + i)

/**
 * `idempotent`: retry on every connection error and 5xx. `once`: the call has effects (create,
 * execute), so retry only when the server cannot have acted on it: the connection was never made,
 * or 502/503 (a proxy or an overloaded server refusing the request).
 */
export type RetryRule = 'idempotent' | 'once'
const RULES: Record<RetryRule, { statusCodes: number[]; errorCodes: string[] }> = {
  idempotent: { statusCodes: SERVER_ERROR_STATUSES, errorCodes: [...CONNECT_ERROR_CODES, ...CONNECTION_LOST_CODES] },
  once: { statusCodes: [502, 503], errorCodes: CONNECT_ERROR_CODES },
}

export type HttpMethod = 'GET' | 'POST' | 'DELETE'

export interface CallOptions {
  body?: unknown
  operation: string
  vm?: string | undefined
  /** Headers and body timeout. @default FIRECRACKER_REQUEST_TIMEOUT_MS scaled */
  timeoutMs?: number
  signal?: AbortSignal | undefined
  retry: RetryRule
}

export interface FirecrackerClientOptions {
  baseUrl: string
  /** The bearer token; undefined makes every call fail as invalid options. */
  token: string | undefined
  /** @default undici's global dispatcher, looked up at the first call */
  dispatcher?: Dispatcher | undefined
}

/** The fcctl-web HTTP API: calls, retries, redaction and error mapping. The token lives only in this closure. */
export interface FirecrackerClient {
  readonly baseUrl: string
  readonly hasToken: boolean
  /** One call; resolves with any status the rules do not turn into an error (4xx included). */
  call(method: HttpMethod, path: string, options: CallOptions): Promise<{ status: number; text: string }>
  /** A call whose answer must be `expect`ed (2xx by default) and parse as `schema`. */
  callJson<T>(schema: z.ZodType<T>, method: HttpMethod, path: string, options: CallOptions, expect?: (status: number) => boolean): Promise<T>
  /** VMPOOL_HTTP_ERROR quoting at most QUOTED_BODY_MAX_CHARS of the redacted body. */
  httpError(operation: string, vm: string | undefined, method: string, path: string, status: number, text: string): VmPoolError
  /** Text with every occurrence of the token replaced. */
  redact(text: string): string
}

export function createFirecrackerClient(options: FirecrackerClientOptions): FirecrackerClient {
  const { baseUrl, token } = options
  let agents: Record<RetryRule, RetryAgent> | undefined
  // undici's RetryAgent does the backoff (and honours Retry-After); `throwOnError: false` hands us the
  // last answer once the retries are spent, so its body can be quoted.
  const agentFor = (rule: RetryRule) => {
    const base = options.dispatcher ?? undici().getGlobalDispatcher()
    const make = (selected: RetryRule) =>
      new (undici().RetryAgent)(base, {
        ...RULES[selected],
        methods: ['GET', 'POST', 'DELETE'],
        maxRetries: FIRECRACKER_MAX_RETRIES,
        minTimeout: FIRECRACKER_RETRY_BASE_DELAY_MS,
        timeoutFactor: 2,
        maxTimeout: FIRECRACKER_RETRY_MAX_DELAY_MS,
        throwOnError: false,
      })
    agents ??= { idempotent: make('idempotent'), once: make('once') }
    return agents[rule]
  }

  /** Redact first, then cut: a token straddling the cut must not leak in part. */
  const redact = (text: string) => (token ? text.replaceAll(token, '[redacted]') : text)
  const quote = (text: string, max = QUOTED_BODY_MAX_CHARS) => redact(text).trim().slice(0, max)
  const httpError = (operation: string, vm: string | undefined, method: string, path: string, status: number, text: string) =>
    new VmPoolError({ code: 'VMPOOL_HTTP_ERROR', provider: PROVIDER, operation, vm, message: `${method} ${path} answered HTTP ${status}: ${quote(text) || '(empty body)'}`, details: { method, path, status } })

  async function call(method: HttpMethod, path: string, callOptions: CallOptions): Promise<{ status: number; text: string }> {
    const { operation, vm, signal } = callOptions
    if (!token) throw invalidOptions('no Firecracker API token: pass the token option or set FIRECRACKER_AUTH_TOKEN', { provider: PROVIDER, operation, vm })
    if (signal?.aborted) throw abortedError({ signal, provider: PROVIDER, vm })
    const timeoutMs = callOptions.timeoutMs ?? scaleTimeout(FIRECRACKER_REQUEST_TIMEOUT_MS)
    const rule = RULES[callOptions.retry]
    let status: number
    let text: string
    try {
      const response = await undici().request(`${baseUrl}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, accept: 'application/json', ...(callOptions.body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: callOptions.body === undefined ? undefined : JSON.stringify(callOptions.body),
        signal,
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
        dispatcher: agentFor(callOptions.retry),
      })
      text = await response.body.text()
      status = response.statusCode
    } catch (error) {
      if (signal?.aborted) throw abortedError({ signal, provider: PROVIDER, vm })
      const code = (error as { code?: string }).code ?? ''
      debug('%s %s failed: %s', method, path, code || (error as Error).message)
      // The agent retries these codes: seeing one here means the retries are spent.
      if (rule.errorCodes.includes(code)) {
        throw new VmPoolError({
          code: 'VMPOOL_PROVIDER_UNAVAILABLE',
          provider: PROVIDER,
          operation,
          vm,
          message: `cannot reach the Firecracker API at ${baseUrl} (${code}, after ${FIRECRACKER_MAX_RETRIES} retries)`,
          hint: 'is fcctl-web running? Set FIRECRACKER_API_URL (or the url option) to where it listens',
          cause: error,
        })
      }
      throw new VmPoolError({
        code: 'VMPOOL_HTTP_ERROR',
        provider: PROVIDER,
        operation,
        vm,
        message: `${method} ${baseUrl}${path} failed: ${redact((error as Error).message)}${code ? ` (${code})` : ''}`,
        hint: code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' ? 'the API did not answer in time; set VM_POOL_TIMEOUT_SCALE=2 on slow hosts' : undefined,
        details: code ? { code } : undefined,
        cause: error,
      })
    }
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
    if (rule.statusCodes.includes(status)) {
      const error = httpError(operation, vm, method, path, status, text)
      throw new VmPoolError({ code: 'VMPOOL_PROVIDER_UNAVAILABLE', provider: PROVIDER, operation, vm, message: `${error.shortMessage} (after ${FIRECRACKER_MAX_RETRIES} retries)`, hint: 'is fcctl-web healthy? Check its logs', details: error.details, cause: error })
    }
    return { status, text }
  }

  async function callJson<T>(schema: z.ZodType<T>, method: HttpMethod, path: string, callOptions: CallOptions, expect: (status: number) => boolean = (s) => s >= 200 && s < 300): Promise<T> {
    const { status, text } = await call(method, path, callOptions)
    const { operation, vm } = callOptions
    if (!expect(status)) throw httpError(operation, vm, method, path, status, text)
    let data: unknown
    try {
      data = JSON.parse(text)
    } catch {
      // No `cause`: JSON.parse's message quotes the start of the body, unredacted.
      throw new VmPoolError({ code: 'VMPOOL_HTTP_ERROR', provider: PROVIDER, operation, vm, message: `${method} ${path} answered HTTP ${status} with something that is not JSON: ${quote(text, 200)}` })
    }
    const result = schema.safeParse(data)
    if (!result.success) throw new VmPoolError({ code: 'VMPOOL_HTTP_ERROR', provider: PROVIDER, operation, vm, message: `${method} ${path} answered unexpected JSON: ${formatZodError(result.error)}` })
    return result.data
  }

  return { baseUrl, hasToken: token !== undefined, call, callJson, httpError, redact }
}

/** True for the VMPOOL_HTTP_ERROR a call maps `status` to (e.g. 404 on a VM that is gone). */
export function isHttpStatus(error: unknown, status: number): boolean {
  return isVmPoolError(error, 'VMPOOL_HTTP_ERROR') && error.details?.status === status
}
