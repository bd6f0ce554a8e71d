import { VmPoolTimeoutError, invalidOptions } from '../errors.js'

/**
 * `VM_POOL_TIMEOUT_SCALE` multiplies every named timeout (slow CI, TCG emulation).
 * Read on each call: importing this module does nothing.
 */
export function getTimeoutScale(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.VM_POOL_TIMEOUT_SCALE
  if (raw === undefined || raw === '') return 1
  const scale = Number(raw)
  if (!Number.isFinite(scale) || scale <= 0) {
    throw invalidOptions(`VM_POOL_TIMEOUT_SCALE must be a positive number, got ${JSON.stringify(raw)}`)
  }
  return scale
}

/**
 * The longest delay a Node timer holds: 2^31-1 ms (about 24.8 days). A longer one fires after 1 ms, so
 * `VM_POOL_TIMEOUT_SCALE=1000` (or `timeout-seconds: 604800` with a scale of 4) made every step "time out" at once.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1

let clampReported = false

/**
 * Every scaled timeout ends here: clamped to `MAX_TIMER_MS` AFTER scaling (a clamp before it would not
 * help), with one process warning (code `VMPOOL_TIMEOUT_CLAMPED`) the first time it happens.
 */
export function clampTimerMs(ms: number): number {
  if (ms <= MAX_TIMER_MS) return ms
  if (!clampReported) {
    clampReported = true
    process.emitWarning(`a timeout of ${ms} ms (after VM_POOL_TIMEOUT_SCALE) is longer than Node timers allow: clamped to ${MAX_TIMER_MS} ms (about 24.8 days), here and for every later one`, { code: 'VMPOOL_TIMEOUT_CLAMPED' })
  }
  return MAX_TIMER_MS
}

/** `ms` times `VM_POOL_TIMEOUT_SCALE`, clamped to what a Node timer holds. */
export function scaleTimeout(ms: number, env?: NodeJS.ProcessEnv): number {
  return scaleTimeoutBy(ms, getTimeoutScale(env))
}

/** `ms` times an already-read scale (the workflow runners read it once per run), clamped to what a Node timer holds. */
export function scaleTimeoutBy(ms: number, scale: number): number {
  return clampTimerMs(Math.round(ms * scale))
}

export interface WithTimeoutOptions {
  /** The constant's name, e.g. `BOOT_TIMEOUT_MS`; shown in the error. */
  name: string
  ms: number
  /** What was awaited, e.g. `SSH to answer on 127.0.0.1:40022`. */
  what: string
  provider?: string
  vm?: string
  hint?: string
  code?: 'VMPOOL_TIMEOUT' | 'VMPOOL_BOOT_TIMEOUT' | 'VMPOOL_QUEUE_TIMEOUT'
}

/** Race `promise` against a named timeout. The timer never keeps the process alive. */
export async function withTimeout<T>(promise: Promise<T>, options: WithTimeoutOptions): Promise<T> {
  options = { ...options, ms: clampTimerMs(options.ms) }
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(
        new VmPoolTimeoutError({
          code: options.code,
          message: `timed out after ${options.ms} ms waiting for ${options.what} (${options.name})`,
          timeoutName: options.name,
          timeoutMs: options.ms,
          provider: options.provider,
          vm: options.vm,
          hint: options.hint ?? 'set VM_POOL_TIMEOUT_SCALE=2 (or higher) on slow machines',
        }),
      )
    }, options.ms)
    timer.unref()
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** `promise`'s value, or undefined when it has not settled within `ms`: no error, the caller decides what late means. */
export async function settleWithin<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<undefined>((resolve) => (timer = setTimeout(resolve, clampTimerMs(ms), undefined)))
  try {
    return await Promise.race([promise, expired])
  } finally {
    clearTimeout(timer)
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason)
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    const onAbort = () => {
      clearTimeout(timer)
      reject(signal?.reason)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}
