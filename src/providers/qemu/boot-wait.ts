/**
 * Waiting for a started guest to answer: the serial console's boot marker first (until then an SSH
 * attempt only sits in QEMU's forwarder), then a first command over SSH. Fails fast when QEMU exits,
 * and every failure shows the end of the guest's console.
 */
import { open, readFile } from 'node:fs/promises'
import { VmPoolError, VmPoolTimeoutError, isVmPoolError } from '../../errors.js'
import type { SshTransport } from '../../transport/ssh-transport.js'
import { isProcessAlive } from '../../util/process-info.js'
import { settleWithin, sleep } from '../../util/timeouts.js'
import type { QemuProcessFile } from './qemu-vm-dir.js'

/** Pause between boot checks. */
const BOOT_POLL_INTERVAL_MS = 200
/** Console lines shown in a boot error. */
const SERIAL_TAIL_LINES = 25
/** Bytes read from the end of the console log for those lines. */
const SERIAL_TAIL_BYTES = 16_384

export interface WaitForBootOptions {
  vm: string
  transport: SshTransport
  identity: QemuProcessFile
  serialLog: string
  /** The name of the timeout that set `timeoutMs`, for the message (`BOOT_TIMEOUT_MS`, `RESTORE_TIMEOUT_MS`). */
  timeoutName: string
  timeoutMs: number
  /** The caller's `bootTimeoutMs` option set `timeoutMs`: VM_POOL_TIMEOUT_SCALE does not scale it, so the hint says to raise the option. */
  timeoutFromOption?: boolean
  /** `performance.now()` when QEMU was started: the deadline counts from there. */
  startedAt: number
  /** Wait for this console line before trying SSH; undefined: try SSH at once (a restored guest is already up). */
  bootMarker: string | undefined
  /** Run until it exits 0: the guest is up. */
  readyCommand: () => string
  /** Appended to error messages, e.g. ` (the snapshot template in DIR)`. */
  context?: string
  /** How QEMU and its console are watched when they are not on this machine (a VM host); default: `localBootProbe`. */
  probe?: BootProbe
}

/** Where the boot wait looks: is QEMU alive, what did the console print. */
export interface BootProbe {
  isAlive(): Promise<boolean>
  /** Whether the console printed `marker` yet. */
  hasConsoleLine(marker: string): Promise<boolean>
  /** The end of the console, indented for an error message (`readSerialTail`'s format). */
  consoleTail(): Promise<string>
}

/** QEMU a process of this machine, its console a file here. */
export function localBootProbe(identity: QemuProcessFile, serialLog: string): BootProbe {
  return {
    isAlive: async () => isProcessAlive(identity),
    hasConsoleLine: async (marker) => (await readFile(serialLog, 'utf8').catch(() => '')).includes(marker),
    consoleTail: () => readSerialTail(serialLog),
  }
}

/**
 * Until a command runs in the guest. Throws VMPOOL_CREATE_FAILED when QEMU exits, VMPOOL_BOOT_TIMEOUT
 * when `timeoutMs` runs out, and the SSH error at once when the guest answers with the wrong host key
 * or refuses the key (waiting would not help).
 */
export async function waitForBoot(options: WaitForBootOptions): Promise<void> {
  const { vm, transport, identity } = options
  const deadline = options.startedAt + options.timeoutMs
  let lastError: unknown
  let markerSeen = options.bootMarker === undefined
  const probe = options.probe ?? localBootProbe(identity, options.serialLog)
  while (performance.now() < deadline) {
    if (!(await probe.isAlive())) {
      throw new VmPoolError({
        code: 'VMPOOL_CREATE_FAILED',
        provider: 'qemu',
        operation: 'create',
        vm,
        message: `QEMU exited while the guest was booting${options.context ?? ''}; the guest's console ended with:\n${await probe.consoleTail()}`,
        hint: 'a kernel panic or a broken image: rebuild it with `vm-pool image build --force`',
      })
    }
    if (!markerSeen) {
      markerSeen = await probe.hasConsoleLine(options.bootMarker!)
      if (!markerSeen) {
        await sleep(BOOT_POLL_INTERVAL_MS)
        continue
      }
    }
    try {
      // An attempt may not outlast the boot deadline (the handshake timeout alone could).
      const remainingMs = Math.max(1, deadline - performance.now())
      const attempt = transport.exec(options.readyCommand())
      const result = await settleWithin(attempt, remainingMs)
      if (result === undefined) {
        attempt.catch(() => {})
        await transport.close()
        break
      }
      if (result.exitCode === 0) return
      lastError = new Error(`the first command exited with ${result.exitCode}`)
    } catch (error) {
      if (isVmPoolError(error, 'VMPOOL_HOST_KEY_MISMATCH') || isVmPoolError(error, 'VMPOOL_AUTH_FAILED')) throw error
      lastError = error
    }
    await sleep(BOOT_POLL_INTERVAL_MS)
  }
  throw new VmPoolTimeoutError({
    code: 'VMPOOL_BOOT_TIMEOUT',
    provider: 'qemu',
    operation: 'create',
    vm,
    timeoutName: options.timeoutName,
    timeoutMs: options.timeoutMs,
    message: `timed out after ${options.timeoutMs} ms waiting for SSH on 127.0.0.1:${identity.port} (${options.timeoutName}, ${identity.accel})${options.context ?? ''}; last error: ${(lastError as Error | undefined)?.message ?? 'none'}; the guest's console ended with:\n${await probe.consoleTail()}`,
    hint: options.timeoutFromOption
      ? 'the bootTimeoutMs provider option set this timeout, and VM_POOL_TIMEOUT_SCALE does not scale a timeout you set: raise bootTimeoutMs (or leave it out); the VM was killed'
      : 'on a slow or busy machine set VM_POOL_TIMEOUT_SCALE=2 (or higher); the VM was killed',
    cause: lastError,
  })
}

/** The last SERIAL_TAIL_LINES non-empty console lines, indented for an error message. */
export async function readSerialTail(serialLog: string): Promise<string> {
  try {
    const handle = await open(serialLog, 'r')
    try {
      const { size } = await handle.stat()
      const length = Math.min(size, SERIAL_TAIL_BYTES)
      const buffer = Buffer.alloc(length)
      await handle.read(buffer, 0, length, size - length)
      const lines = buffer.toString('utf8').replace(/\r/g, '').split('\n').filter((line) => line.trim() !== '')
      return lines.length === 0 ? '  (no console output)' : lines.slice(-SERIAL_TAIL_LINES).map((line) => `  | ${line}`).join('\n')
    } finally {
      await handle.close()
    }
  } catch {
    return '  (no console log)'
  }
}
