import { homedir } from 'node:os'
import { join, resolve } from 'node:path'

/**
 * Where vm-pool keeps state shared between processes (fake VMs, QEMU VM dirs, images, leases):
 * the `stateDir` option, else `VM_POOL_STATE_DIR`, else `$XDG_CACHE_HOME/vm-pool`, else `~/.cache/vm-pool`.
 */
export function getStateDir(stateDir?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (stateDir) return resolve(stateDir)
  if (env.VM_POOL_STATE_DIR) return resolve(env.VM_POOL_STATE_DIR)
  const cache = env.XDG_CACHE_HOME ? resolve(env.XDG_CACHE_HOME) : join(homedir(), '.cache')
  return join(cache, 'vm-pool')
}
