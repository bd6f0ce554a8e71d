import { VmPoolError } from '../errors.js'
import type { ExecResult } from './exec-types.js'
import { TarExtractor, type ExtractContext } from './tar/tar-extractor.js'

/**
 * `putDirectory` / `getDirectory` as tar streams, the guest side of which is the guest's own `tar`
 * (busybox in the minimal image, GNU tar elsewhere): shared by every provider. The host side is
 * tar/tar-writer.ts and tar/tar-extractor.ts (no tar program needed on this machine).
 */

/**
 * `sh -c` script extracting stdin into `$1` (made if missing). `umask 0`: GNU tar run by a normal user
 * applies the umask to the archived modes, busybox tar does not; `-o`: files belong to whoever extracts.
 */
export const GUEST_EXTRACT_SCRIPT = 'mkdir -p -- "$1" && cd -- "$1" && umask 0 && tar -x -o -f -'
/** `sh -c` script writing a tar of everything under `$1` to stdout (symlinks as links, not followed). */
export const GUEST_PACK_SCRIPT = 'cd -- "$1" && tar -c -f - .'

export function guestExtractArgv(guestDir: string): string[] {
  return ['sh', '-c', GUEST_EXTRACT_SCRIPT, 'sh', guestDir]
}

export function guestPackArgv(guestDir: string): string[] {
  return ['sh', '-c', GUEST_PACK_SCRIPT, 'sh', guestDir]
}

/** VMPOOL_EXEC_FAILED for a guest `tar` (or `cd`) that failed, quoting its stderr. */
export function directoryFailed(operation: 'putDirectory' | 'getDirectory', guestDir: string, result: ExecResult, context: { provider: string; vm: string }): VmPoolError {
  return new VmPoolError({
    code: 'VMPOOL_EXEC_FAILED',
    ...context,
    operation,
    message: `${operation} ${JSON.stringify(guestDir)} on ${context.vm} failed${result.timedOut ? ' (timed out)' : ''} with exit code ${result.exitCode}: ${result.stderr.trim().slice(0, 500) || 'no error output'}`,
    hint: operation === 'getDirectory' ? 'does the directory exist in the VM, and is `tar` installed there?' : 'is `tar` installed in the VM, and may its user write there?',
    details: { guestDir, exitCode: result.exitCode },
  })
}

/**
 * The host side of `getDirectory`: feed it the guest's stdout chunk by chunk (each `write` resolves
 * once on disk), then `finish` with the guest command's result.
 */
export interface DirectorySink {
  write(chunk: Buffer): Promise<void>
  finish(result: ExecResult): Promise<void>
  /** After a failure: close what is open. */
  abort(): Promise<void>
}

export function createDirectorySink(localDir: string, guestDir: string, context: Omit<ExtractContext, 'source'>): DirectorySink {
  const extractor = new TarExtractor(localDir, { ...context, source: `${context.vm}:${guestDir}` })
  return {
    write: (chunk) => extractor.write(chunk),
    async finish(result) {
      if (result.exitCode !== 0) {
        await extractor.abort()
        throw directoryFailed('getDirectory', guestDir, result, context)
      }
      await extractor.end()
    },
    abort: () => extractor.abort(),
  }
}
