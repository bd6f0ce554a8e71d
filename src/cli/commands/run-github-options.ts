import { existsSync } from 'node:fs'
import { isGithubWorkflowFile } from '../../workflow/github/detect-github-workflow.js'
import { UsageError } from '../cli-command.js'

/**
 * The options and help of `vm-pool run` for GitHub Actions workflow files, and the check that picks
 * that path: light, so that run.ts loads the GitHub runner (run-github.ts) only when it is needed.
 */

export const GITHUB_RUN_OPTIONS = {
  job: { type: 'string', multiple: true },
  matrix: { type: 'string', multiple: true },
  list: { type: 'boolean' },
  strict: { type: 'boolean' },
  repo: { type: 'string' },
  runners: { type: 'string' },
} as const

export const GITHUB_RUN_HELP = `GitHub Actions workflow files (.github/workflows/*.yml, or any file with jobs:) run one VM per
job and matrix cell, every command of a cell on its VM, jobs ordered by needs:, under --max-concurrent:
      --job ID            run only this job (repeatable); its needs: count as succeeded
      --matrix KEY=VALUE  run only the matrix cells with this value (repeatable)
      --list              print the jobs, matrix cells and VMs it would run, and run nothing
      --strict            a step with another action's uses: (skipped with a warning otherwise)
                          or an ignored key is an error
      --repo DIR          the repository actions/checkout copies (its tracked files); default: the
                          directory holding .github/workflows/
      --runners FILE      runs-on label → VM mapping; default: <repo>/.github/vm-pool.yml if present
`

export type GithubRunValues = { [key: string]: string | boolean | (string | boolean)[] | undefined }

/** True when the files are GitHub workflows; mixing them with vm-pool workflow files is bad usage. */
export async function isGithubRun(paths: string[], values: GithubRunValues): Promise<boolean> {
  const kinds = await Promise.all(paths.map((path) => isGithubWorkflowFile(path)))
  if (kinds.every(Boolean)) return true
  if (kinds.some(Boolean)) throw new UsageError('GitHub Actions workflow files and vm-pool workflow files cannot be mixed in one run: run them separately')
  const given = Object.keys(GITHUB_RUN_OPTIONS).filter((option) => values[option] !== undefined)
  if (given.length === 0) return false
  // A missing file is not "not a GitHub file": say it is missing, as run does without these options.
  const missing = paths.filter((path) => !existsSync(path))
  if (missing.length > 0) throw new UsageError(`cannot read workflow file ${missing.join(', ')}: no such file`)
  throw new UsageError(`--${given[0]} applies to GitHub Actions workflow files (with jobs:), and ${paths.join(', ')} ${paths.length === 1 ? 'is' : 'are'} not`)
}
