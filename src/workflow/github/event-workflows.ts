import { isVmPoolError } from '../../errors.js'
import { matchesEvent, type WebhookEvent } from './event-filter.js'
import type { GithubWorkflow } from './github-workflow-schema.js'
import { parseGithubWorkflow } from './load-github-workflow.js'
import { hasCommit, listWorkflowFiles, readRepoFile, type RepoSource } from './repo-source.js'

/**
 * The workflow files of a repository that an event starts. They are read from the event's commit when
 * the repository has it (what GitHub would run), else from the working tree — `from` says which.
 * A file that does not parse is reported in `invalid` and does not stop the others.
 */
export interface EventWorkflows {
  source: RepoSource
  from: 'commit' | 'working-tree'
  workflows: GithubWorkflow[]
  invalid: Array<{ path: string; message: string }>
}

export async function findWorkflowsForEvent(repoDir: string, event: WebhookEvent, sha?: string): Promise<EventWorkflows> {
  const source: RepoSource = sha !== undefined && (await hasCommit(repoDir, sha)) ? { dir: repoDir, commit: sha } : { dir: repoDir }
  const result: EventWorkflows = { source, from: source.commit === undefined ? 'working-tree' : 'commit', workflows: [], invalid: [] }
  for (const path of await listWorkflowFiles(source)) {
    try {
      const workflow = parseGithubWorkflow(await readRepoFile(source, path), path)
      if (matchesEvent(workflow.triggers, event)) result.workflows.push(workflow)
    } catch (error) {
      result.invalid.push({ path, message: isVmPoolError(error) ? error.shortMessage : (error as Error).message })
    }
  }
  return result
}
