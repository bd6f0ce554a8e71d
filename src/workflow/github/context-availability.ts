import type { KeyPath } from '../yaml-source.js'

/**
 * Which contexts GitHub lets a `${{ }}` use at each key of a workflow (its "Context availability" table in
 * the contexts reference). GitHub refuses a workflow that uses another one ("Unrecognized named-value"),
 * so vm-pool does too, before any VM boots: a file that runs here then also runs there.
 */
const WORKFLOW_ENV = ['github', 'secrets', 'inputs', 'vars']
const JOB_LEVEL = ['github', 'needs', 'strategy', 'matrix', 'inputs', 'vars']
const STEP_LEVEL = ['github', 'needs', 'strategy', 'matrix', 'job', 'runner', 'env', 'secrets', 'steps', 'inputs', 'vars']

const JOB_KEYS: Record<string, readonly string[]> = {
  name: JOB_LEVEL,
  'runs-on': JOB_LEVEL,
  'timeout-minutes': JOB_LEVEL,
  'continue-on-error': JOB_LEVEL,
  concurrency: JOB_LEVEL,
  environment: JOB_LEVEL,
  if: ['github', 'needs', 'inputs', 'vars'],
  env: [...JOB_LEVEL, 'secrets'],
  defaults: [...JOB_LEVEL, 'env'],
  outputs: STEP_LEVEL,
  strategy: ['github', 'needs', 'inputs', 'vars'],
}

/** The contexts a string at `path` may use, or undefined where GitHub's table says nothing (no check). */
export function getAllowedContexts(path: KeyPath): readonly string[] | undefined {
  const [first, , key, , stepKey] = path
  if (first === 'env') return WORKFLOW_ENV
  if (first !== 'jobs' || typeof key !== 'string') return undefined
  if (key !== 'steps') return JOB_KEYS[key]
  if (stepKey === 'id' || stepKey === 'uses') return undefined
  // A step's `if:` is evaluated where secrets are not (GitHub leaves them out of it).
  return stepKey === 'if' ? STEP_LEVEL.filter((name) => name !== 'secrets') : STEP_LEVEL
}
