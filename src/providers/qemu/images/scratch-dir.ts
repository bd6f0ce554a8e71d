/**
 * Removing a build's scratch dir safely. mmdebstrap (root mode) mounts proc, sys, a devpts and a bind
 * of the host's /dev/shm inside the new root; a build killed mid-way (SIGTERM, SIGKILL) can leave them
 * mounted, and a plain recursive rm would then delete the host's shared memory files through the
 * bind. So: unmount everything below the dir first (deepest first), and refuse to remove a dir that
 * still has a mount below it.
 */
import { readFile, rm } from 'node:fs/promises'
import { resolve, sep } from 'node:path'
import { VmPoolError } from '../../../errors.js'
import { runProcess } from '../../../transport/process-runner.js'
import { scaleTimeout } from '../../../util/timeouts.js'

/** One `umount`; slow only when the machine is very busy. */
const UMOUNT_TIMEOUT_MS = 30_000

/** Mount points at or below `dir` (from /proc/self/mounts; octal escapes such as `\040` decoded), deepest first. */
export async function getMountsUnder(dir: string, mountsFile = '/proc/self/mounts'): Promise<string[]> {
  const text = await readFile(mountsFile, 'utf8').catch(() => '')
  const root = resolve(dir)
  const points = text
    .split('\n')
    .map((line) => line.split(' ')[1])
    .filter((field): field is string => field !== undefined && field !== '')
    .map((field) => field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8))))
    .filter((point) => point === root || point.startsWith(root + sep))
  return [...new Set(points)].sort((a, b) => b.length - a.length)
}

/** Unmount whatever is mounted below `dir`, then remove it; a dir that keeps a mount is left alone (an error says which). */
export async function removeScratchDir(dir: string): Promise<void> {
  for (const point of await getMountsUnder(dir)) {
    // --lazy: a process still inside (a dying dpkg) does not keep the mount busy.
    await runProcess('umount', ['--lazy', point], { timeoutMs: scaleTimeout(UMOUNT_TIMEOUT_MS), env: process.env, provider: 'qemu' }).catch(() => undefined)
  }
  const left = await getMountsUnder(dir)
  if (left.length > 0) {
    throw new VmPoolError({
      code: 'VMPOOL_IMAGE_BUILD_FAILED',
      provider: 'qemu',
      operation: 'image build',
      message: `not removing ${dir}: ${left.join(', ')} ${left.length === 1 ? 'is' : 'are'} still mounted (a killed build's chroot; removing it could delete host files through a bind mount)`,
      hint: `unmount them as root (umount -R ${dir}) and remove the dir`,
    })
  }
  await rm(dir, { recursive: true, force: true })
}
