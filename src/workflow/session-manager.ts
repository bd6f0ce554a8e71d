import { z } from 'zod'
import { VmPoolError, VmPoolTimeoutError, invalidOptions, isVmPoolError } from '../errors.js'
import { formatZodError } from '../config/zod-error.js'
import { scaleTimeout } from '../util/timeouts.js'
import { generateRunId, NAME_PART_PATTERN as NAME_PART, validateVmName, WORKFLOW_PREFIX } from '../util/vm-name.js'
import type { Vm, VmProvider, VmSpec } from '../providers/vm-provider.js'
import { providerVmAllocator, type VmAllocation, type VmAllocator } from './vm-allocator.js'
import { vmSpecSchema } from '../config/vm-spec-schema.js'

/** How long a queued session waits for a free slot when `queueTimeoutMs` is not given (scaled by `VM_POOL_TIMEOUT_SCALE`). */
export const QUEUE_TIMEOUT_MS = 30 * 60_000

/** Two VMs at a time: what a 2-core CI runner can emulate without starving both. */
export const DEFAULT_MAX_CONCURRENT_SESSIONS = 2

export const WORKFLOW_VM_PREFIX = WORKFLOW_PREFIX

// Node timers overflow past 2^31-1 ms and fire immediately; beyond that we simply do not arm one.
const MAX_TIMER_MS = 2 ** 31 - 1

const isProvider = (value: unknown): value is VmProvider =>
  typeof value === 'object' &&
  value !== null &&
  ['create', 'connect', 'delete', 'list'].every((method) => typeof (value as Record<string, unknown>)[method] === 'function')

const isAllocator = (value: unknown): value is VmAllocator =>
  typeof value === 'object' && value !== null && typeof (value as Record<string, unknown>).allocate === 'function'

export const sessionManagerOptionsSchema = z
  .object({
    provider: z.custom<VmProvider>(isProvider, { error: 'expected a VmProvider (an object with create, connect, delete and list)' }),
    maxConcurrentSessions: z.number().int().positive().default(DEFAULT_MAX_CONCURRENT_SESSIONS),
    onLimit: z.enum(['queue', 'reject']).default('queue'),
    queueTimeoutMs: z.union([z.number().int().positive(), z.literal(Number.POSITIVE_INFINITY)]).optional(),
    prefix: z.string().regex(NAME_PART, { error: 'expected lower-case letters and digits separated by single dashes' }).default(WORKFLOW_VM_PREFIX),
    runId: z.string().regex(NAME_PART, { error: 'expected lower-case letters and digits separated by single dashes' }).optional(),
    spec: vmSpecSchema.optional(),
    allocator: z.custom<VmAllocator>(isAllocator, { error: 'expected an object with allocate(spec)' }).optional(),
  })
  .strict()

export interface SessionManagerOptions {
  /** Where VMs come from. */
  provider: VmProvider
  /** Sessions (= VMs) open at the same time. @default 2 */
  maxConcurrentSessions?: number
  /** Past the limit: `queue` waits FIFO for a free slot, `reject` fails with `VMPOOL_SESSION_LIMIT`. @default 'queue' */
  onLimit?: 'queue' | 'reject'
  /** How long a queued session waits before `VMPOOL_QUEUE_TIMEOUT`; `Infinity` waits forever. @default QUEUE_TIMEOUT_MS (30 min, scaled by VM_POOL_TIMEOUT_SCALE) */
  queueTimeoutMs?: number
  /** VM names are `<prefix>-<runId>-<n>`. @default 'vm-pool-wf' */
  prefix?: string
  /** Identifies this run in VM names, so `vm-pool gc` can tell runs apart. @default 8 random hex digits */
  runId?: string
  /** Image, size and labels of every VM (the name is chosen by the manager). */
  spec?: Omit<VmSpec, 'name'>
  /** Advanced: take VMs from somewhere other than `provider.create` (e.g. a cross-process pool). @default providerVmAllocator(provider) */
  allocator?: VmAllocator
}

export interface OpenSessionOptions {
  /** Aborting stops waiting for a slot; a VM created meanwhile is deleted. */
  signal?: AbortSignal
  /** This session's VM spec, over the manager's `spec` (a GitHub job's `runs-on` VM). */
  spec?: Omit<VmSpec, 'name'>
}

export interface ReleaseSessionOptions {
  /** Leave the VM running (seed 004 debug mode). @default false */
  keepVm?: boolean
}

/** One workflow's hold on exactly one VM. */
export interface WorkflowSession extends AsyncDisposable {
  /** 1, 2, … in the order sessions got a slot. */
  readonly id: number
  /** The session's VM; every command of the workflow runs on it. */
  readonly vm: Vm
  readonly released: boolean
  /** Delete the VM (or keep it) and free the slot. Idempotent. */
  release(options?: ReleaseSessionOptions): Promise<void>
}

interface Waiter {
  grant(): void
}

/**
 * Hands out sessions, each owning one VM, under a concurrency limit (seeds 000/001: the VM is allocated
 * when the session opens, before the first command, and never inside the step loop).
 */
export class SessionManager {
  readonly runId: string
  readonly prefix: string
  readonly maxConcurrentSessions: number
  readonly onLimit: 'queue' | 'reject'
  readonly provider: VmProvider
  readonly #queueTimeoutMs: number
  readonly #queueTimeoutFromOption: boolean
  readonly #spec: Omit<VmSpec, 'name'>
  readonly #allocator: VmAllocator
  #active = 0
  #counter = 0
  readonly #waiters: Waiter[] = []

  constructor(options: SessionManagerOptions) {
    const parsed = sessionManagerOptionsSchema.safeParse(options)
    if (!parsed.success) throw invalidOptions(`invalid SessionManager options: ${formatZodError(parsed.error, options)}`, { operation: 'session-manager' })
    const config = parsed.data
    this.provider = config.provider
    this.maxConcurrentSessions = config.maxConcurrentSessions
    this.onLimit = config.onLimit
    this.prefix = config.prefix
    this.runId = config.runId ?? generateRunId()
    this.#queueTimeoutFromOption = config.queueTimeoutMs !== undefined
    this.#queueTimeoutMs = config.queueTimeoutMs ?? scaleTimeout(QUEUE_TIMEOUT_MS)
    this.#spec = Object.freeze({ ...config.spec })
    this.#allocator = config.allocator ?? providerVmAllocator(config.provider)
    // Fail now, not on the first session: a prefix + run id too long for a VM name.
    validateVmName(this.#vmName(1))
  }

  /** Sessions holding a slot right now (a VM being created counts). */
  get activeSessions(): number {
    return this.#active
  }

  /** Sessions waiting for a slot (queue mode). */
  get queuedSessions(): number {
    return this.#waiters.length
  }

  /**
   * Wait for a slot (or fail in `reject` mode), then allocate the session's VM. Resolves once the VM
   * accepts commands. If allocation fails the slot is freed and the error is thrown.
   */
  async openSession(options: OpenSessionOptions = {}): Promise<WorkflowSession> {
    const { signal } = options
    const spec = vmSpecSchema.safeParse(options.spec ?? {})
    if (!spec.success) throw invalidOptions(`invalid openSession spec: ${formatZodError(spec.error, options.spec)}`, { operation: 'open-session', provider: this.provider.name })
    await this.#acquireSlot(signal)
    const id = ++this.#counter
    const name = this.#vmName(id)
    let allocation: VmAllocation
    try {
      allocation = await this.#allocator.allocate({ ...this.#spec, ...spec.data, name })
    } catch (error) {
      this.#releaseSlot()
      if (isVmPoolError(error)) throw error
      throw new VmPoolError({ code: 'VMPOOL_CREATE_FAILED', provider: this.provider.name, operation: 'open-session', vm: name, message: `could not create the session VM ${name}: ${(error as Error)?.message ?? String(error)}`, cause: error })
    }
    if (signal?.aborted) {
      // Creation cannot be interrupted halfway; what finished after the abort is deleted at once.
      try {
        await allocation.release({ keepVm: false })
      } finally {
        this.#releaseSlot()
      }
      throw abortedError(signal, 'while the session VM was being created', name, this.provider.name)
    }
    return this.#makeSession(id, allocation)
  }

  #makeSession(id: number, allocation: VmAllocation): WorkflowSession {
    let releasing: Promise<void> | undefined
    let released = false
    const release = (releaseOptions: ReleaseSessionOptions = {}): Promise<void> => {
      releasing ??= (async () => {
        try {
          await allocation.release({ keepVm: releaseOptions.keepVm ?? false })
        } finally {
          released = true
          this.#releaseSlot()
        }
      })()
      return releasing
    }
    return {
      id,
      vm: allocation.vm,
      get released() {
        return released
      },
      release,
      [Symbol.asyncDispose]: () => release(),
    }
  }

  #vmName(id: number): string {
    return `${this.prefix}-${this.runId}-${id}`
  }

  #acquireSlot(signal: AbortSignal | undefined): Promise<void> {
    if (signal?.aborted) return Promise.reject(abortedError(signal, 'before a session slot was free', undefined, this.provider.name))
    if (this.#active < this.maxConcurrentSessions) {
      this.#active++
      return Promise.resolve()
    }
    if (this.onLimit === 'reject') {
      return Promise.reject(
        new VmPoolError({
          code: 'VMPOOL_SESSION_LIMIT',
          provider: this.provider.name,
          operation: 'open-session',
          message: `session limit reached: maxConcurrentSessions is ${this.maxConcurrentSessions} and ${this.#active} sessions are open`,
          hint: `release a session first, raise maxConcurrentSessions, or use onLimit: 'queue' to wait for a slot`,
          details: { maxConcurrentSessions: this.maxConcurrentSessions, activeSessions: this.#active },
        }),
      )
    }
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined
      const settle = () => {
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        const index = this.#waiters.indexOf(waiter)
        if (index >= 0) this.#waiters.splice(index, 1)
      }
      const waiter: Waiter = {
        grant: () => {
          settle()
          resolve()
        },
      }
      const onAbort = () => {
        settle()
        reject(abortedError(signal!, 'while waiting for a session slot', undefined, this.provider.name))
      }
      if (this.#queueTimeoutMs <= MAX_TIMER_MS) {
        timer = setTimeout(() => {
          settle()
          reject(
            new VmPoolTimeoutError({
              code: 'VMPOOL_QUEUE_TIMEOUT',
              provider: this.provider.name,
              operation: 'open-session',
              message: `timed out after ${this.#queueTimeoutMs} ms waiting for a session slot: all ${this.maxConcurrentSessions} (maxConcurrentSessions) stayed in use (QUEUE_TIMEOUT_MS)`,
              timeoutName: 'QUEUE_TIMEOUT_MS',
              timeoutMs: this.#queueTimeoutMs,
              hint: this.#queueTimeoutFromOption
                ? 'raise queueTimeoutMs or maxConcurrentSessions'
                : 'raise maxConcurrentSessions, pass a larger queueTimeoutMs, or set VM_POOL_TIMEOUT_SCALE=2 (or higher)',
            }),
          )
        }, this.#queueTimeoutMs)
        timer.unref()
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#waiters.push(waiter)
    })
  }

  #releaseSlot(): void {
    // Hand the slot straight to the oldest waiter (FIFO) so a newcomer cannot overtake the queue.
    const next = this.#waiters[0]
    if (next) next.grant()
    else this.#active--
  }
}

function abortedError(signal: AbortSignal, when: string, vm: string | undefined, provider: string): VmPoolError {
  return new VmPoolError({ code: 'VMPOOL_ABORTED', provider, operation: 'open-session', vm, message: `aborted ${when}`, cause: signal.reason })
}
