import { statSync } from 'node:fs'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { VmPoolError } from '../errors.js'

/**
 * The folders of a state dir that decide what a pool adopts or deletes: lease tables, reaper markers and
 * the VM records of the QEMU and fake providers. Whoever can write there can plant a VM record.
 */
export const GUARDED_STATE_SUBDIRS: readonly string[] = Object.freeze(['leases', 'reapers', 'qemu', 'fake'])

/**
 * Where vm-pool keeps state shared between processes (fake VMs, QEMU VM dirs, images, leases):
 * the `stateDir` option, else `VM_POOL_STATE_DIR`, else `$XDG_CACHE_HOME/vm-pool`, else `~/.cache/vm-pool`.
 * Every user of the state dir asks here, so this is the one place that refuses an unsafe one (see
 * `checkStateDirSafety`).
 */
export function getStateDir(stateDir?: string, env: NodeJS.ProcessEnv = process.env): string {
  const dir = resolveStateDir(stateDir, env)
  checkStateDirSafety(dir)
  return dir
}

function resolveStateDir(stateDir: string | undefined, env: NodeJS.ProcessEnv): string {
  if (stateDir) return resolve(stateDir)
  if (env.VM_POOL_STATE_DIR) return resolve(env.VM_POOL_STATE_DIR)
  const cache = env.XDG_CACHE_HOME ? resolve(env.XDG_CACHE_HOME) : join(homedir(), '.cache')
  return join(cache, 'vm-pool')
}

/**
 * Refuse a state dir (or one of `GUARDED_STATE_SUBDIRS`) that exists and is owned by another user, or is
 * writable by group or others (a 0777 dir, a shared /tmp): its owner, or anyone, could plant a lease or a VM
 * record that this process then adopts and runs commands in. Folders that do not exist yet are fine: we
 * create them 0700. Symlinks are followed: what counts is the folder the files land in. Root is checked
 * like anyone else (it must own the folders too). Where `process.getuid` is missing (Windows) only the mode is checked.
 */
export function checkStateDirSafety(stateDir: string): void {
  const uid = process.getuid?.()
  for (const dir of [stateDir, ...GUARDED_STATE_SUBDIRS.map((sub) => join(stateDir, sub))]) {
    let stats
    try {
      stats = statSync(dir)
    } catch {
      continue
    }
    const problem =
      uid !== undefined && stats.uid !== uid
        ? `is owned by uid ${stats.uid}, not by this user (uid ${uid})`
        : (stats.mode & 0o022) !== 0
          ? `is writable by ${stats.mode & 0o020 ? 'group' : ''}${(stats.mode & 0o022) === 0o022 ? ' and ' : ''}${stats.mode & 0o002 ? 'others' : ''} (mode ${(stats.mode & 0o7777).toString(8).padStart(4, '0')})`
          : undefined
    if (problem === undefined) continue
    throw new VmPoolError({
      code: 'VMPOOL_INVALID_OPTIONS',
      operation: 'state-dir',
      message: `refusing to use the state dir ${dir}: it ${problem}, so someone else could plant a lease or a VM record there that vm-pool would adopt and run commands in`,
      hint: `use a folder of your own that only you can write: chown it to yourself and chmod go-w it (chmod 700 ${dir}), or set VM_POOL_STATE_DIR to another folder`,
      details: { dir },
    })
  }
}
