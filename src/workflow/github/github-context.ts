import type { ExpressionValue } from './expression-parser.js'
import type { RepoInfo } from './repo-source.js'

/**
 * The `github` context and the `GITHUB_*` variables of a run, from the repository (`vm-pool run`:
 * event `push` of the checked-out branch) or from a webhook payload (`vm-pool serve`).
 */

export interface GithubTrigger {
  /** `push`, `pull_request`, … */
  eventName: string
  /** The webhook payload (`github.event`); `{}` for a local run. */
  event: { [key: string]: ExpressionValue }
  sha?: string
  /** `refs/heads/main`, `refs/tags/v1`, `refs/pull/7/merge`. */
  ref?: string
  repository: string
  actor: string
  /** Pull requests: the head and base branch names. */
  headRef?: string
  baseRef?: string
}

/** A local run: a push of the working tree's branch. */
export function localTrigger(info: RepoInfo, env: NodeJS.ProcessEnv = process.env): GithubTrigger {
  const trigger: GithubTrigger = { eventName: 'push', event: {}, repository: info.repository, actor: env.USER ?? env.LOGNAME ?? 'vm-pool' }
  if (info.sha !== undefined) trigger.sha = info.sha
  if (info.ref !== undefined) trigger.ref = info.ref
  return trigger
}

const text = (value: ExpressionValue | undefined): string | undefined => (typeof value === 'string' && value !== '' ? value : undefined)
const object = (value: ExpressionValue | undefined): { [key: string]: ExpressionValue } => (typeof value === 'object' && value !== null && !Array.isArray(value) ? value : {})

/** A webhook event: `push` (ref, after) or `pull_request` (number, head, base). */
export function webhookTrigger(eventName: string, payload: { [key: string]: ExpressionValue }, fallbackRepository: string): GithubTrigger {
  const repository = text(object(payload.repository).full_name) ?? fallbackRepository
  const trigger: GithubTrigger = { eventName, event: payload, repository, actor: text(object(payload.sender).login) ?? 'github' }
  if (eventName === 'pull_request') {
    const pr = object(payload.pull_request)
    const number = typeof payload.number === 'number' ? payload.number : pr.number
    const sha = text(object(pr.head).sha)
    if (sha) trigger.sha = sha
    if (typeof number === 'number') trigger.ref = `refs/pull/${number}/merge`
    const headRef = text(object(pr.head).ref)
    const baseRef = text(object(pr.base).ref)
    if (headRef) trigger.headRef = headRef
    if (baseRef) trigger.baseRef = baseRef
  } else {
    const sha = text(payload.after) ?? text(object(payload.head_commit).id)
    const ref = text(payload.ref)
    if (sha) trigger.sha = sha
    if (ref) trigger.ref = ref
  }
  return trigger
}

/** `main` of `refs/heads/main`, `v1` of `refs/tags/v1`, `7/merge` of `refs/pull/7/merge`. */
export function refName(ref: string | undefined): string {
  return (ref ?? '').replace(/^refs\/(heads|tags|pull)\//, '')
}

export interface JobScope {
  trigger: GithubTrigger
  workflow: string
  runId: string
  job: string
  /** Absolute path of the workspace in the VM. */
  workspace: string
  /** The VM's name (`runner.name`). */
  vm: string
  /** A directory of the VM for GITHUB_ENV and friends, read back after each `run:` step (read-file-commands.ts). */
  tempDir: string
}

export function makeGithubContext(scope: JobScope): { [key: string]: ExpressionValue } {
  const { trigger } = scope
  return {
    event_name: trigger.eventName,
    event: trigger.event,
    sha: trigger.sha ?? '',
    ref: trigger.ref ?? '',
    ref_name: refName(trigger.ref),
    ref_type: trigger.ref?.startsWith('refs/tags/') ? 'tag' : 'branch',
    head_ref: trigger.headRef ?? '',
    base_ref: trigger.baseRef ?? '',
    repository: trigger.repository,
    repository_owner: trigger.repository.includes('/') ? trigger.repository.split('/')[0]! : '',
    actor: trigger.actor,
    run_id: scope.runId,
    run_number: '1',
    run_attempt: '1',
    workflow: scope.workflow,
    job: scope.job,
    workspace: scope.workspace,
    server_url: 'https://github.com',
  }
}

export function makeRunnerContext(scope: JobScope): { [key: string]: ExpressionValue } {
  return { os: 'Linux', name: scope.vm, temp: scope.tempDir, environment: 'self-hosted' }
}

/** The default environment of every step (under the workflow's, job's and step's own `env`). */
export function makeGithubEnv(scope: JobScope): Record<string, string> {
  const github = makeGithubContext(scope)
  const env: Record<string, string> = {
    CI: 'true',
    GITHUB_ACTIONS: 'true',
    GITHUB_WORKSPACE: scope.workspace,
    GITHUB_EVENT_NAME: scope.trigger.eventName,
    GITHUB_SHA: String(github.sha),
    GITHUB_REF: String(github.ref),
    GITHUB_REF_NAME: String(github.ref_name),
    GITHUB_REF_TYPE: String(github.ref_type),
    GITHUB_HEAD_REF: String(github.head_ref),
    GITHUB_BASE_REF: String(github.base_ref),
    GITHUB_REPOSITORY: scope.trigger.repository,
    GITHUB_REPOSITORY_OWNER: String(github.repository_owner),
    GITHUB_ACTOR: scope.trigger.actor,
    GITHUB_RUN_ID: scope.runId,
    GITHUB_RUN_NUMBER: '1',
    GITHUB_RUN_ATTEMPT: '1',
    GITHUB_WORKFLOW: scope.workflow,
    GITHUB_JOB: scope.job,
    GITHUB_SERVER_URL: 'https://github.com',
    RUNNER_OS: 'Linux',
    RUNNER_NAME: scope.vm,
    RUNNER_TEMP: scope.tempDir,
    // Appended to by steps (echo x >> "$GITHUB_ENV"), read back and emptied after each run: step.
    GITHUB_ENV: `${scope.tempDir}/env`,
    GITHUB_OUTPUT: `${scope.tempDir}/output`,
    GITHUB_PATH: `${scope.tempDir}/path`,
    GITHUB_STEP_SUMMARY: `${scope.tempDir}/summary`,
  }
  return env
}
