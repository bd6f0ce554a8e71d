/**
 * Finding QEMU processes by what their command line says, for the cases `process.json` cannot cover:
 * a creator that died between QEMU writing its pid file and vm-pool writing `process.json`, and a QEMU
 * whose whole VM dir was removed (docs/qemu.md, "Leaks"). A pid is trusted only when its command line
 * has the expected `-name` and `-pidfile`, read between two identical start-time reads: a reused pid is
 * never mistaken for our QEMU.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { getProcessStartTime, isPidAlive, type ProcessIdentity } from '../../util/process-info.js'
import { VM_NAME_PATTERN } from '../../util/vm-name.js'
import { QEMU_NAME_PREFIX } from './qemu-command.js'
import { VM_DIR_FILES } from './qemu-vm-dir.js'

/** What a QEMU command line says about whose it is. */
export interface QemuCommandLine {
  /** The `-name` value without `vm-pool-`. */
  name: string
  pidFile: string
}

/** A live process found by its command line, with the identity to kill it by. */
export interface QemuProcessRef extends ProcessIdentity, QemuCommandLine {}

/** `-name vm-pool-<name>` and `-pidfile <path>` from an argv; undefined when either is missing. */
export function parseQemuCommandLine(argv: readonly string[]): QemuCommandLine | undefined {
  const valueOf = (flag: string): string | undefined => {
    const at = argv.indexOf(flag)
    return at >= 0 ? argv[at + 1] : undefined
  }
  const name = valueOf('-name')
  const pidFile = valueOf('-pidfile')
  if (name === undefined || pidFile === undefined || !name.startsWith(QEMU_NAME_PREFIX)) return undefined
  return { name: name.slice(QEMU_NAME_PREFIX.length), pidFile }
}

/**
 * The identity of `pid` if it is alive and its command line is `expected` (`-name` and `-pidfile`), so
 * it is the QEMU that wrote that pid file and not a process that got the pid later; otherwise undefined.
 */
export function identifyQemu(pid: number, expected: QemuCommandLine): QemuProcessRef | undefined {
  const startTime = getProcessStartTime(pid)
  const commandLine = readCommandLine(pid)
  if (!commandLine || !isSameCommandLine(commandLine, expected) || !isPidAlive(pid)) return undefined
  // The same start time after reading the command line: the line belongs to the process we timed.
  if (startTime === null || getProcessStartTime(pid) !== startTime) return undefined
  return { pid, host: hostname(), startTime, ...commandLine }
}

/** Every live process started with exactly this `-name` and `-pidfile` (a QEMU and, while it daemonizes, its parent). */
export function findQemuByCommandLine(expected: QemuCommandLine): QemuProcessRef[] {
  return scan(`\0-pidfile\0${expected.pidFile}\0`).filter((ref) => isSameCommandLine(ref, expected))
}

/**
 * Every live QEMU of a VM under `root` (a `<stateDir>/qemu`): `-name vm-pool-<name>` together with
 * `-pidfile <root>/<name>/qemu.pid`, `name` a valid VM name. Snapshot templates and other providers'
 * state roots do not match.
 */
export function findVmQemuProcesses(root: string): QemuProcessRef[] {
  return scan(`\0-pidfile\0${root}/`).filter((ref) => VM_NAME_PATTERN.test(ref.name) && ref.pidFile === join(root, ref.name, VM_DIR_FILES.pid))
}

/** /proc/<pid>/cmdline of every process, kept when it contains `needle` (NUL-separated argv). */
function scan(needle: string): QemuProcessRef[] {
  let entries: string[]
  try {
    entries = readdirSync('/proc').filter((entry) => /^\d+$/.test(entry))
  } catch {
    return []
  }
  const found: QemuProcessRef[] = []
  for (const entry of entries) {
    const pid = Number(entry)
    if (pid === process.pid) continue
    let raw: string
    try {
      raw = readFileSync(`/proc/${entry}/cmdline`, 'utf8')
    } catch {
      continue // exited while we looked, or not ours to read
    }
    if (!`\0${raw}`.includes(needle)) continue
    const parsed = parseQemuCommandLine(raw.split('\0'))
    const ref = parsed && identifyQemu(pid, parsed)
    if (ref) found.push(ref)
  }
  return found
}

function isSameCommandLine(a: QemuCommandLine, b: QemuCommandLine): boolean {
  return a.name === b.name && a.pidFile === b.pidFile
}

function readCommandLine(pid: number): QemuCommandLine | undefined {
  try {
    return parseQemuCommandLine(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0'))
  } catch {
    return undefined
  }
}
