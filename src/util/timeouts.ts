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

export function scaleTimeout(ms: number, env?: NodeJS.ProcessEnv): number {
  return Math.round(ms * getTimeoutScale(env))
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
