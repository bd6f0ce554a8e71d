import { access, constants } from 'node:fs/promises'
import { delimiter, join } from 'node:path'
import { VmPoolError } from '../../../errors.js'

/** A program an image build runs, and the Debian package that provides it (for the install hint). */
export interface HostTool {
  name: string
  pkg: string
}

/** Searched after PATH: a non-root user's PATH on Debian lacks them, yet dropbear and mkfs.ext4 live there. */
const SBIN_DIRS = ['/usr/sbin', '/sbin']

/**
 * The first executable `name` on PATH (then in /usr/sbin, /sbin), or undefined. Builds look tools up
 * on PATH, not at fixed paths, so hiding apt/dpkg from PATH really makes a build take the path for
 * hosts without them.
 */
export async function findOnPath(name: string, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  const dirs = (env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter).filter(Boolean)
  for (const dir of [...dirs, ...SBIN_DIRS.filter((sbin) => !dirs.includes(sbin))]) {
    const candidate = join(dir, name)
    try {
      await access(candidate, constants.X_OK)
      return candidate
    } catch {
      // next
    }
  }
  return undefined
}

/** Every tool's path, or one error naming all missing tools and the packages to install. */
export async function requireHostTools<T extends string>(tools: ReadonlyArray<HostTool & { name: T }>, what: string, env: NodeJS.ProcessEnv = process.env): Promise<Record<T, string>> {
  const found = {} as Record<T, string>
  const missing: HostTool[] = []
  for (const tool of tools) {
    const path = await findOnPath(tool.name, env)
    if (path) found[tool.name] = path
    else missing.push(tool)
  }
  if (missing.length === 0) return found
  const packages = [...new Set(missing.map((tool) => tool.pkg))]
  throw new VmPoolError({
    code: 'VMPOOL_IMAGE_BUILD_FAILED',
    provider: 'qemu',
    operation: 'image build',
    message: `${what} needs host tools that are not on PATH: ${missing.map((tool) => `${tool.name} (package ${tool.pkg})`).join(', ')}`,
    hint: `install them: sudo apt-get install ${packages.join(' ')}`,
    details: { missing: missing.map((tool) => tool.name), packages },
  })
}
