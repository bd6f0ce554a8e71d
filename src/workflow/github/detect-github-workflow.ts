import { sep } from 'node:path'
import { parseYamlSource, readWorkflowFile } from '../yaml-source.js'

/**
 * Is a file a GitHub Actions workflow (rather than a vm-pool workflow file)? Kept apart from the
 * loader so that `vm-pool run` can decide without loading the GitHub runner.
 */

/** True for data that looks like a GitHub Actions workflow (`jobs:` at the top, no vm-pool `steps:`), or a file under `.github/workflows/`. */
export function looksLikeGithubWorkflow(data: unknown, path?: string): boolean {
  if (path !== undefined && `${sep}${path}`.replaceAll('\\', '/').includes('/.github/workflows/')) return true
  return typeof data === 'object' && data !== null && !Array.isArray(data) && 'jobs' in data && !('steps' in data)
}

/**
 * True when `path` holds a GitHub Actions workflow. A file that cannot be read or parsed is not one:
 * the vm-pool workflow loader then reports the problem.
 */
export async function isGithubWorkflowFile(path: string): Promise<boolean> {
  try {
    return looksLikeGithubWorkflow(parseYamlSource(await readWorkflowFile(path), path).data, path)
  } catch {
    return false
  }
}
