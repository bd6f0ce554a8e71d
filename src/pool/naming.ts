import { randomBytes } from 'node:crypto'
import { VmPoolError, invalidOptions } from '../errors.js'
import { getProcessStartUnixMs, isPidAlive } from '../util/process-info.js'
import { validateVmName } from '../util/vm-name.js'

/**
 * VM names carry who made them, so `vm-pool gc` can find leftovers even without a lease store:
 * `vitest-worker-<runId>-<slot>`, `vitest-fresh-<runId>-<n>`, `vm-pool-wf-<runId>-<n>`.
 */
export const WORKER_PREFIX = 'vitest-worker'
export const FRESH_PREFIX = 'vitest-fresh'
export const WORKFLOW_PREFIX = 'vm-pool-wf'
/** Other runners' worker VMs (the pytest plugin in python/): `pytest-worker-<pid>-<unix time>`, judged by that pid and time. */
export const PYTEST_WORKER_PREFIX = 'pytest-worker'
/** `pytest-worker-<pid>-<unix seconds>`: the name is made after the worker started; allow for the whole-second rounding of both clocks. */
export const PYTEST_START_SLACK_MS = 2_000
/** The pytest plugin's `fresh_vm` VMs: `pytest-fresh-<runId>-<n>`. */
export const PYTEST_FRESH_PREFIX = 'pytest-fresh'
/** VMs a `vm-pool protocol` client leases without naming them: `vm-pool-runner-<runId>-<key or n>`. */
export const RUNNER_PREFIX = 'vm-pool-runner'

/** Name prefixes `vm-pool gc` sweeps by default (each followed by `-`). */
export const SWEEP_PREFIXES: readonly string[] = Object.freeze([WORKER_PREFIX, FRESH_PREFIX, WORKFLOW_PREFIX, PYTEST_WORKER_PREFIX, PYTEST_FRESH_PREFIX, RUNNER_PREFIX, 'test-vm'])

const PREFIX_PATTERN = /^[a-z0-9][a-z0-9-]{0,39}$/
const RUN_ID_PATTERN = /^[a-z0-9]{1,16}$/
const KEY_PATTERN = /^[a-z0-9][a-z0-9-]{0,31}$/

export function validatePrefix(prefix: string): string {
  if (!PREFIX_PATTERN.test(prefix) || prefix.endsWith('-')) {
    throw invalidOptions(`invalid name prefix ${JSON.stringify(prefix)}: expected ${PREFIX_PATTERN.source} without a trailing dash`)
  }
  return prefix
}

export function validateRunId(runId: string): string {
  if (!RUN_ID_PATTERN.test(runId)) throw invalidOptions(`invalid runId ${JSON.stringify(runId)}: expected ${RUN_ID_PATTERN.source}`)
  return runId
}

/**
 * A lease key becomes part of a VM name. Numbers (Vitest's `VITEST_POOL_ID`) are accepted as is;
 * anything else must already be a name part — we refuse rather than mangle, so two keys never map to one name.
 */
export function normalizeLeaseKey(key: string | number): string {
  const text = String(key)
  if (!KEY_PATTERN.test(text)) {
    throw invalidOptions(`invalid lease key ${JSON.stringify(key)}: expected a number or ${KEY_PATTERN.source}`, { operation: 'acquire' })
  }
  return text
}

/** 8 random base-36 characters: short enough for names, unique enough between runs on one host. */
export function generateRunId(): string {
  const bytes = randomBytes(8)
  return Array.from(bytes, (byte) => (byte % 36).toString(36)).join('')
}

export function makeVmName(prefix: string, runId: string, suffix: string): string {
  return validateVmName(`${prefix}-${runId}-${suffix}`)
}

/** Where `fresh()` VMs of a pool with `prefix` are named: Vitest workers get `vitest-fresh`, other pools their own prefix. */
export function getFreshPrefix(prefix: string): string {
  return prefix === WORKER_PREFIX ? FRESH_PREFIX : prefix
}

export function matchesSweepPrefix(name: string, prefixes: readonly string[]): boolean {
  return prefixes.some((prefix) => name.startsWith(`${prefix}-`))
}

export interface PytestWorkerName {
  pid: number
  /** Unix milliseconds (the name has whole seconds). */
  createdAtMs: number
}

/** `pytest-worker-<pid>-<unix seconds>` → its pid and time; anything else → null. */
export function parsePytestWorkerName(name: string): PytestWorkerName | null {
  const match = /^pytest-worker-(\d{1,10})-(\d{9,11})$/.exec(name)
  if (!match) return null
  return { pid: Number(match[1]), createdAtMs: Number(match[2]) * 1000 }
}

/** The name of a pytest worker's VM: `pytest-worker-<pid>-<unix seconds>`, the pid of the worker process. */
export function makePytestWorkerName(pid: number, unixSeconds: number): string {
  return validateVmName(`${PYTEST_WORKER_PREFIX}-${pid}-${unixSeconds}`)
}

export interface RunnerNameVerdict {
  /** True while the process the name carries is the one that named the VM. */
  alive: boolean
  reason: string
}

/**
 * A VM name that carries its runner's pid and time (`pytest-worker-<pid>-<unix time>`) is judged by them
 * when no lease knows the VM: alive while that pid runs *and* started before that time (a later start
 * means the pid was reused). `null` for other names. `vm-pool gc` decides with this, and the pool refuses
 * to boot a VM under such a name that this would already call dead, so both always agree.
 */
export function judgeRunnerName(name: string): RunnerNameVerdict | null {
  const pytest = parsePytestWorkerName(name)
  if (!pytest) return null
  if (!isPidAlive(pytest.pid)) return { alive: false, reason: `pytest worker pid ${pytest.pid} is gone` }
  const started = getProcessStartUnixMs(pytest.pid)
  if (started !== null && started > pytest.createdAtMs + PYTEST_START_SLACK_MS) {
    return { alive: false, reason: `pid ${pytest.pid} is alive but started after the VM was named: the pid was reused` }
  }
  return { alive: true, reason: `pytest worker pid ${pytest.pid} is alive` }
}

/**
 * An explicit name for a VM the pool boots (`acquire(key, { name })`): a valid VM name, and one that
 * `vm-pool gc` would not already judge dead by the pid and time it carries.
 */
export function validateExplicitName(name: string, provider?: string): string {
  validateVmName(name, provider)
  const verdict = judgeRunnerName(name)
  if (verdict && !verdict.alive) {
    throw new VmPoolError({
      code: 'VMPOOL_INVALID_NAME',
      provider,
      operation: 'acquire',
      vm: name,
      message: `refusing the name ${name}: ${verdict.reason}, so \`vm-pool gc\` would delete the VM as soon as its lease is gone`,
      hint: 'name it after the live runner process: pytest-worker-<its pid>-<unix time now>',
    })
  }
  return name
}
