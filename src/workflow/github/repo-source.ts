import { lstat, readFile } from 'node:fs/promises'
import { basename, dirname, join, resolve, sep } from 'node:path'
import { execa } from 'execa'
import { VmPoolError } from '../../errors.js'

/**
 * The repository a GitHub workflow runs for: its working tree (`vm-pool run`: the TRACKED files, as
 * they are on disk now) or one commit in it (`vm-pool serve`, when the pushed commit is present).
 * Everything goes through `git`, so what is copied is what git would check out, never build output.
 */

/**
 * The largest checkout copied into a VM. The tar is held in memory until `Vm.putDirectory` streams it
 * (see guest-tar.ts); past this the run stops with a message instead of exhausting memory.
 */
export const MAX_CHECKOUT_BYTES = 512 * 1024 * 1024

/** How long a local git or tar command may take. */
export const GIT_COMMAND_TIMEOUT_MS = 120_000

export interface RepoSource {
  /** The repository's directory on this host. */
  dir: string
  /** Read this commit instead of the working tree. */
  commit?: string
}

export interface RepoInfo {
  /** `HEAD` (or the given commit); undefined outside a git repository. */
  sha?: string
  /** `refs/heads/<branch>` of the working tree; undefined when detached or outside git. */
  ref?: string
  /** `owner/name` from the `origin` remote, else the directory's name. */
  repository: string
}

async function git(dir: string, args: string[], options: { input?: string; buffer?: boolean } = {}) {
  return execa('git', ['-C', dir, ...args], {
    timeout: GIT_COMMAND_TIMEOUT_MS,
    maxBuffer: MAX_CHECKOUT_BYTES,
    reject: false,
    ...(options.input !== undefined ? { input: options.input } : {}),
    ...(options.buffer ? { encoding: 'buffer' as const } : {}),
  })
}

/**
 * The repository directory of a workflow file: the directory holding `.github/workflows/`, else the
 * top of the git repository around it, else the current directory.
 */
export async function findRepoDir(workflowPath: string): Promise<string> {
  const absolute = resolve(workflowPath)
  const marker = `${sep}.github${sep}workflows${sep}`
  const index = absolute.lastIndexOf(marker)
  if (index >= 0) return absolute.slice(0, index) || sep
  const top = await git(dirname(absolute), ['rev-parse', '--show-toplevel'])
  return top.exitCode === 0 ? String(top.stdout).trim() : process.cwd()
}

export async function isGitRepository(dir: string): Promise<boolean> {
  const result = await git(dir, ['rev-parse', '--is-inside-work-tree']).catch(() => undefined)
  return result?.exitCode === 0 && String(result.stdout).trim() === 'true'
}

/** True when `sha` names a commit present in the repository. */
export async function hasCommit(dir: string, sha: string): Promise<boolean> {
  if (!/^[0-9a-f]{7,64}$/i.test(sha)) return false
  const result = await git(dir, ['cat-file', '-e', `${sha}^{commit}`]).catch(() => undefined)
  return result?.exitCode === 0
}

export async function getRepoInfo(source: RepoSource): Promise<RepoInfo> {
  const [head, ref, remote] = await Promise.all([
    git(source.dir, ['rev-parse', source.commit ?? 'HEAD']).catch(() => undefined),
    git(source.dir, ['symbolic-ref', '-q', 'HEAD']).catch(() => undefined),
    git(source.dir, ['config', '--get', 'remote.origin.url']).catch(() => undefined),
  ])
  const info: RepoInfo = { repository: repositoryName(remote?.exitCode === 0 ? String(remote.stdout).trim() : '') ?? basename(source.dir) }
  if (head?.exitCode === 0) info.sha = String(head.stdout).trim()
  if (ref?.exitCode === 0 && source.commit === undefined) info.ref = String(ref.stdout).trim()
  return info
}

/** `owner/name` of a GitHub remote URL (`git@github.com:o/n.git`, `https://github.com/o/n`). */
export function repositoryName(url: string): string | undefined {
  return /[/:]([^/:]+\/[^/]+?)(?:\.git)?\/?$/.exec(url)?.[1]
}

/** A file of the repository (for the workflow files `serve` runs). */
export async function readRepoFile(source: RepoSource, path: string): Promise<string> {
  if (source.commit === undefined) return readFile(join(source.dir, path), 'utf8')
  const result = await git(source.dir, ['show', `${source.commit}:${path}`])
  if (result.exitCode !== 0) throw gitError(`cannot read ${path} at ${source.commit}`, String(result.stderr))
  return String(result.stdout)
}

/** `.github/workflows/*.yml` and `*.yaml`, relative to the repository. */
export async function listWorkflowFiles(source: RepoSource): Promise<string[]> {
  const args = source.commit === undefined ? ['ls-files', '-z', '--', '.github/workflows'] : ['ls-tree', '-z', '--name-only', source.commit, '.github/workflows/']
  const result = await git(source.dir, args)
  if (result.exitCode !== 0) throw gitError('cannot list the workflow files', String(result.stderr))
  return String(result.stdout)
    .split('\0')
    .filter((path) => /^\.github\/workflows\/[^/]+\.ya?ml$/.test(path))
    .sort()
}

/**
 * A tar of the checkout: `git archive` of the commit, or the tracked files of the working tree as they
 * are on disk (modified files with their changes; untracked and ignored files never). Owners are
 * written as root so that extracting as any user in the VM keeps the files readable.
 */
export async function makeCheckoutTar(source: RepoSource): Promise<Buffer> {
  let result
  if (source.commit !== undefined) {
    result = await git(source.dir, ['archive', '--format=tar', source.commit], { buffer: true })
  } else {
    const listed = await git(source.dir, ['ls-files', '-z', '--cached'])
    if (listed.exitCode !== 0) throw gitError(`cannot list the tracked files of ${source.dir}`, String(listed.stderr))
    const files: string[] = []
    for (const path of String(listed.stdout).split('\0').filter(Boolean)) {
      // Deleted-but-tracked files are gone from disk; submodules are directories: neither is copied.
      const stat = await lstat(join(source.dir, path)).catch(() => undefined)
      if (stat && (stat.isFile() || stat.isSymbolicLink())) files.push(path)
    }
    result = await execa('tar', ['-c', '-f', '-', '--owner=0', '--group=0', '--numeric-owner', '--no-recursion', '--null', '-T', '-'], {
      cwd: source.dir,
      input: files.join('\0'),
      encoding: 'buffer',
      maxBuffer: MAX_CHECKOUT_BYTES,
      timeout: GIT_COMMAND_TIMEOUT_MS,
      reject: false,
    })
  }
  if (result.isMaxBuffer) {
    throw new VmPoolError({
      code: 'VMPOOL_EXEC_FAILED',
      operation: 'checkout',
      message: `the checkout of ${source.dir} is larger than ${MAX_CHECKOUT_BYTES / 1024 / 1024} MiB (MAX_CHECKOUT_BYTES)`,
      hint: 'copy large data into the VM in a step instead',
    })
  }
  if (result.exitCode !== 0) throw gitError(`cannot pack the checkout of ${source.dir}`, Buffer.from(result.stderr as Uint8Array).toString('utf8'))
  return Buffer.from(result.stdout as Uint8Array)
}

function gitError(what: string, stderr: string): VmPoolError {
  return new VmPoolError({
    code: 'VMPOOL_EXEC_FAILED',
    operation: 'checkout',
    message: `${what}: ${stderr.trim().split('\n').slice(-3).join(' ') || 'git failed'}`,
    hint: 'the repository must be a git checkout (git init; git add) with git on PATH',
  })
}
