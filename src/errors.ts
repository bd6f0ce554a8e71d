/**
 * Every error vm-pool throws on purpose is a `VmPoolError` with a stable `code`.
 * Messages read `[vm-pool] [<provider>] <what happened>`; context is plain data so an error
 * survives being sent from a Vitest worker to the main process (see `toJSON` / `fromJSON`).
 */

export const VM_POOL_ERROR_CODES = [
  'VMPOOL_INVALID_OPTIONS',
  'VMPOOL_INVALID_NAME',
  'VMPOOL_PROVIDER_UNAVAILABLE',
  'VMPOOL_CREATE_FAILED',
  'VMPOOL_BOOT_TIMEOUT',
  'VMPOOL_VM_NOT_FOUND',
  'VMPOOL_EXEC_FAILED',
  'VMPOOL_EXEC_ABORTED',
  'VMPOOL_DELETE_FAILED',
  'VMPOOL_TIMEOUT',
  'VMPOOL_SESSION_LIMIT',
  'VMPOOL_QUEUE_TIMEOUT',
  'VMPOOL_WORKFLOW_INVALID',
  'VMPOOL_LEASE_STORE',
  'VMPOOL_LEASE_LOST',
  'VMPOOL_NO_CAPACITY',
  'VMPOOL_AUTH_FAILED',
  'VMPOOL_HOST_KEY_MISMATCH',
  'VMPOOL_HTTP_ERROR',
  'VMPOOL_IMAGE_MISSING',
  'VMPOOL_IMAGE_BUILD_FAILED',
  'VMPOOL_SNAPSHOT_INVALID',
  'VMPOOL_POOL_CLOSED',
  'VMPOOL_ABORTED',
  'VMPOOL_UNSUPPORTED',
  'VMPOOL_UNSAFE_PATH',
  'VMPOOL_FORWARD_FAILED',
  'VMPOOL_INTERNAL',
] as const

export type VmPoolErrorCode = (typeof VM_POOL_ERROR_CODES)[number]

export interface VmPoolErrorOptions {
  code: VmPoolErrorCode
  /** What happened, without the `[vm-pool]` prefix. */
  message: string
  /** Provider name, e.g. `qemu`. Shown as the second prefix. */
  provider?: string
  /** The operation that failed, e.g. `create`, `exec`, `acquire`. */
  operation?: string
  /** The VM involved, if any. */
  vm?: string
  /** What the user can try. */
  hint?: string
  /** Extra plain-data context (never secrets). */
  details?: Record<string, unknown>
  cause?: unknown
}

const BRAND = Symbol.for('vm-pool.error')

export class VmPoolError extends Error {
  readonly code: VmPoolErrorCode
  readonly provider: string | undefined
  readonly operation: string | undefined
  readonly vm: string | undefined
  readonly hint: string | undefined
  readonly details: Record<string, unknown> | undefined
  /** The message without prefixes and hint. */
  readonly shortMessage: string

  constructor(options: VmPoolErrorOptions) {
    const prefix = `[vm-pool]${options.provider ? ` [${options.provider}]` : ''} `
    const hint = options.hint ? `\n  hint: ${options.hint}` : ''
    super(`${prefix}${options.message}${hint}`, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'VmPoolError'
    this.code = options.code
    this.provider = options.provider
    this.operation = options.operation
    this.vm = options.vm
    this.hint = options.hint
    this.details = options.details
    this.shortMessage = options.message
    Object.defineProperty(this, BRAND, { value: true })
  }

  /** Plain data that crosses process boundaries (worker → main, broker responses, JSON output). */
  toJSON(): SerializedVmPoolError {
    return {
      name: 'VmPoolError',
      code: this.code,
      message: this.shortMessage,
      provider: this.provider,
      operation: this.operation,
      vm: this.vm,
      hint: this.hint,
      details: this.details,
      cause: this.cause instanceof Error ? { name: this.cause.name, message: this.cause.message } : undefined,
    }
  }

  static fromJSON(data: SerializedVmPoolError): VmPoolError {
    const cause = data.cause ? Object.assign(new Error(data.cause.message), { name: data.cause.name }) : undefined
    return new VmPoolError({ ...data, cause })
  }
}

export interface SerializedVmPoolError {
  name: 'VmPoolError'
  code: VmPoolErrorCode
  message: string
  provider?: string | undefined
  operation?: string | undefined
  vm?: string | undefined
  hint?: string | undefined
  details?: Record<string, unknown> | undefined
  cause?: { name: string; message: string } | undefined
}

/** True for any `VmPoolError`, also one created by another copy of this module (Vitest may load it twice). */
export function isVmPoolError(error: unknown, code?: VmPoolErrorCode): error is VmPoolError {
  if (typeof error !== 'object' || error === null || (error as Record<symbol, unknown>)[BRAND] !== true) return false
  return code === undefined || (error as VmPoolError).code === code
}

/** A named wait ran out. `timeoutName` is the constant, e.g. `BOOT_TIMEOUT_MS`. */
export class VmPoolTimeoutError extends VmPoolError {
  readonly timeoutName: string
  readonly timeoutMs: number
  constructor(options: Omit<VmPoolErrorOptions, 'code'> & { code?: 'VMPOOL_TIMEOUT' | 'VMPOOL_BOOT_TIMEOUT' | 'VMPOOL_QUEUE_TIMEOUT'; timeoutName: string; timeoutMs: number }) {
    super({
      ...options,
      code: options.code ?? 'VMPOOL_TIMEOUT',
      details: { ...options.details, timeoutName: options.timeoutName, timeoutMs: options.timeoutMs },
    })
    this.name = 'VmPoolTimeoutError'
    this.timeoutName = options.timeoutName
    this.timeoutMs = options.timeoutMs
  }
}

/** Bad options or arguments from the user, detected before anything ran. */
export function invalidOptions(message: string, options: Omit<VmPoolErrorOptions, 'code' | 'message'> = {}): VmPoolError {
  return new VmPoolError({ code: 'VMPOOL_INVALID_OPTIONS', message, ...options })
}
