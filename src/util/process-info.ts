import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'

/**
 * A process identity that survives pid reuse: pid plus the kernel's start time of that pid
 * (field 22 of /proc/<pid>/stat, in clock ticks since boot). A dead owner whose pid was reused
 * by another process has a different start time.
 */
export interface ProcessIdentity {
  pid: number
  host: string
  /** `null` when /proc is not available (then only pid liveness is checked). */
  startTime: number | null
}

/** Fields 3.. of /proc/<pid>/stat (state, ppid, ...), or null without /proc or once the pid is gone. */
function readStatFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  } catch {
    return null
  }
}

function parseStartTime(fields: string[] | null): number | null {
  const value = Number(fields?.[19])
  return fields && Number.isFinite(value) ? value : null
}

export function getProcessStartTime(pid: number): number | null {
  return parseStartTime(readStatFields(pid))
}

/** Overrides the host name in lease owners: containers often share one, and a shared lease store tells hosts apart by it. */
export const HOST_ID_ENV = 'VM_POOL_HOST_ID'

let hostName: string | undefined
/**
 * This host's id (`VM_POOL_HOST_ID`, else the host name), read once: liveness checks run under the lease
 * lock, and `hostname()` is a syscall.
 */
export function getHostName(): string {
  hostName ??= process.env[HOST_ID_ENV] || hostname()
  return hostName
}

let selfStartTime: number | null | undefined
/** Ours: the start time is read once (it never changes), the host as `getHostName`. A new object each call. */
export function getCurrentProcessIdentity(): ProcessIdentity {
  if (selfStartTime === undefined) selfStartTime = getProcessStartTime(process.pid)
  return { pid: process.pid, host: getHostName(), startTime: selfStartTime }
}

/** Alive means running: a zombie (exited, not yet reaped — common where PID 1 does not reap) is dead. */
export function isPidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false
  }
  return getProcessStateLetter(pid) !== 'Z'
}

/** The state letter of /proc/<pid>/stat (R, S, D, Z, ...), or null without /proc. */
export function getProcessStateLetter(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? null
  } catch {
    return null
  }
}

/**
 * Alive and the same process (not a reused pid). Processes on another host count as alive: we cannot tell.
 * One signal-0 probe and one read of /proc/<pid>/stat: it runs for every held lease under the lease lock.
 */
export function isProcessAlive(identity: ProcessIdentity): boolean {
  if (identity.host !== getHostName()) return true
  const { pid } = identity
  if (!Number.isInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false
  }
  const fields = readStatFields(pid)
  // A zombie (exited, not yet reaped — common where PID 1 does not reap) is dead.
  if (fields?.[0] === 'Z') return false
  if (identity.startTime === null) return true
  // Gone between the two checks, or no /proc: not provably the same process.
  return parseStartTime(fields) === identity.startTime
}

/** Kernel clock ticks per second for /proc start times (USER_HZ: 100 on every Linux architecture Node supports). */
const USER_HZ = 100

/** Boot time of this host in Unix milliseconds (`btime` in /proc/stat), or `null`. */
export function getBootTimeMs(): number | null {
  try {
    const match = /^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))
    return match ? Number(match[1]) * 1000 : null
  } catch {
    return null
  }
}

/**
 * When `pid` started, in Unix milliseconds (resolution 10 ms, and `btime` itself is whole seconds),
 * or `null` when unknown. Used to judge names that carry a pid and a time (`pytest-worker-<pid>-<unix time>`).
 */
export function getProcessStartUnixMs(pid: number): number | null {
  const ticks = getProcessStartTime(pid)
  const boot = getBootTimeMs()
  if (ticks === null || boot === null) return null
  return boot + Math.round((ticks * 1000) / USER_HZ)
}
