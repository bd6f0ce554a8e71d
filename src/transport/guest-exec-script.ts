import { randomBytes } from 'node:crypto'
import { buildShellScript, quoteShellArg } from './shell.js'
import type { ExecOptions } from './exec-types.js'

/** Seconds between the guest `timeout`'s SIGTERM and its SIGKILL for a command that ignores TERM. */
export const GUEST_KILL_AFTER_SECONDS = 2
/** How long the kill script waits for the pid file of a command that is still starting, in 0.1 s steps. */
const KILL_WAIT_STEPS = 30

export interface GuestExec {
  /** A `sh` script to run inside the guest (as `sh -c SCRIPT`). */
  script: string
  /** A `sh` script that kills the command started by `script`, from a second connection. */
  killScript: string
}

/**
 * Wrap a command for providers that reach the guest through a CLI or an API (`multipass exec`,
 * `orbctl run`, an HTTP execute call). Killing the local client does NOT stop a command inside a VM,
 * so the command runs under GNU `timeout` (which makes itself a process-group leader and kills the
 * whole group when `timeoutMs` runs out, exit 124) and records that group in a pid file; an abort
 * then runs `killScript` through a second connection to kill the group. Relative `cwd` resolves
 * against the home directory because the wrapper starts there. `guestTimeoutMs` undefined = no limit
 * (`timeout 0`), used when the transport enforces the limit itself.
 */
export function makeGuestExec(command: string | readonly string[], options: Pick<ExecOptions, 'cwd' | 'env'> & { guestTimeoutMs?: number | undefined }): GuestExec {
  const inner = buildShellScript(command, options)
  const pidFile = `/tmp/vm-pool-exec-${randomBytes(8).toString('hex')}.pid`
  const duration = options.guestTimeoutMs === undefined ? '0' : (options.guestTimeoutMs / 1000).toFixed(3)
  const script = [
    'cd || exit 1',
    // A background job's stdin is /dev/null unless redirected explicitly: keep the caller's stdin on fd 3.
    'exec 3<&0',
    `timeout -k ${GUEST_KILL_AFTER_SECONDS} ${duration} sh -c ${quoteShellArg(inner)} 0<&3 3<&- &`,
    'vm_pool_pid=$!',
    'exec 3<&-',
    `echo "$vm_pool_pid" > ${pidFile}`,
    'wait "$vm_pool_pid"',
    'vm_pool_rc=$?',
    `rm -f ${pidFile}`,
    'exit "$vm_pool_rc"',
  ].join('\n')
  const killScript = [
    `f=${pidFile}`,
    'i=0',
    `while [ ! -s "$f" ] && [ "$i" -lt ${KILL_WAIT_STEPS} ]; do sleep 0.1; i=$((i + 1)); done`,
    '[ -s "$f" ] || exit 0',
    'p=$(cat "$f")',
    // `kill -9 -PGID` is the form dash, bash and busybox all accept (dash rejects `--` and `-s KILL -PGID`).
    // Before `timeout` made its group the group id may not exist yet: then kill the pid itself.
    'kill -9 "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null',
    'rm -f "$f"',
    'exit 0',
  ].join('\n')
  return { script, killScript }
}
