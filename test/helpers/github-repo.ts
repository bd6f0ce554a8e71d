/**
 * A copy of fixtures/github-repo in a temporary directory, made a git repository there (one commit on
 * `main`), so that "the tracked files" and "the pushed commit" mean what they mean in a real checkout.
 */
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { mkdir } from 'node:fs/promises'
import { execa } from 'execa'

export const GITHUB_FIXTURE_DIR = resolve(import.meta.dirname, '../../fixtures/github-repo')

export interface FixtureRepo {
  dir: string
  /** `<dir>/.github/workflows/ci.yml` */
  ciWorkflow: string
  git(...args: string[]): Promise<string>
  /** Write files (relative paths), `git add` them, commit; returns the new commit. */
  commit(files: Record<string, string>, message?: string): Promise<string>
  dispose(): Promise<void>
}

export async function makeFixtureRepo(): Promise<FixtureRepo> {
  const root = await mkdtemp(join(tmpdir(), 'vm-pool-gh-repo-'))
  const dir = join(root, 'github-repo')
  await cp(GITHUB_FIXTURE_DIR, dir, { recursive: true })
  const git = async (...args: string[]) => {
    const result = await execa('git', ['-c', 'user.name=vm-pool test', '-c', 'user.email=test@vm-pool.invalid', '-c', 'commit.gpgsign=false', ...args], { cwd: dir })
    return String(result.stdout).trim()
  }
  await git('init', '-q', '-b', 'main')
  await git('add', '-A')
  await git('commit', '-q', '-m', 'fixture')
  return {
    dir,
    ciWorkflow: join(dir, '.github/workflows/ci.yml'),
    git,
    async commit(files, message = 'change') {
      for (const [path, text] of Object.entries(files)) {
        await mkdir(dirname(join(dir, path)), { recursive: true })
        await writeFile(join(dir, path), text)
      }
      await git('add', '-A')
      await git('commit', '-q', '-m', message)
      return git('rev-parse', 'HEAD')
    },
    dispose: () => rm(root, { recursive: true, force: true }),
  }
}
