/**
 * How a VM's QEMU gets from nothing to a guest that answers: one small interface with two
 * implementations, a cold boot (cold-boot-strategy.ts) and a restore of a saved guest
 * (snapshot-restore-strategy.ts), which builds its snapshot by composing a cold boot. Kata
 * Containers' VM factory (base / direct / template) is the model: separate implementations
 * composed, not branches in one function. The provider picks one per machine shape.
 */
import { randomBytes } from 'node:crypto'
import { quoteShellArg } from '../../transport/shell.js'
import type { SshTransport } from '../../transport/ssh-transport.js'
import type { QemuProcessFile, QemuVmDir } from './qemu-vm-dir.js'

export interface StartRequest {
  /** The VM this start is for: its hostname and the name in messages. */
  vm: string
  /** Where QEMU's per-run files go (a VM dir, or a snapshot template's work dir). */
  dir: QemuVmDir
  privateKey: Buffer
  /** Tried first, so a reset VM keeps its address. */
  preferredPort?: number
  /** Appended to error messages, e.g. ` (the snapshot template in DIR)`. */
  context?: string
}

/** A QEMU that runs and answers: what create and reset hand on. */
export interface StartedQemu {
  identity: QemuProcessFile
  /** The connection that proved the guest answers; the first `connect` in this process reuses it. */
  transport: SshTransport
  /** From QEMU start to the first finished command. */
  bootMs: number
  /** The snapshot id the guest was restored from; absent after a cold boot. */
  restoredFrom?: string
}

export interface StartStrategy {
  readonly kind: 'cold-boot' | 'snapshot-restore'
  /** Start QEMU in `request.dir` and wait until the guest answers. On failure no QEMU of that dir is left running. */
  start(request: StartRequest): Promise<StartedQemu>
}

/** What `qemuProvider` hands each strategy: where to find QEMU and how long a guest may take. */
export interface StrategyContext {
  binary: string
  /** From QEMU start to a command in the guest (`bootTimeoutMs`, or BOOT_TIMEOUT_MS scaled). */
  bootTimeoutMs: number
  /** `bootTimeoutMs` came from the provider option (not scaled), for the timeout's hint. */
  bootTimeoutFromOption: boolean
  /** Where to shorten a path when the monitor socket's path is too long. */
  pathHint: string
}

/**
 * The first command in a VM gives it its own identity: its name as hostname; for a restored clone also
 * the current time (its clock stopped when the template was saved) and fresh host entropy mixed into
 * its RNG (the kernel also reseeds on the new VM generation ID). Tolerant: a custom image without
 * `hostname` or `date -s` still counts as up.
 */
export function identityCommand(name: string, restored: boolean): string {
  const parts = [`hostname ${quoteShellArg(name)} 2>/dev/null`]
  if (restored) {
    parts.push(`date -s @${Math.floor(Date.now() / 1000)} >/dev/null 2>&1`, `printf %s ${randomBytes(32).toString('hex')} >/dev/urandom 2>/dev/null`)
  }
  return `${parts.join('; ')}; exit 0`
}
