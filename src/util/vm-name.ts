import { randomBytes } from 'node:crypto'
import { VmPoolError, invalidOptions } from '../errors.js'
import { getProcessStartUnixMs, isPidAlive } from './process-info.js'

/**
 * Every rule about VM names lives here: what a name may look like, how pools, workflows and Vitest build
 * theirs (`<prefix>-<runId>-<suffix>`), which prefixes `vm-pool gc` sweeps, and what other runners' names
 * say about their owner (`pytest-worker-<pid>-<unix time>`). Every layer may ask this module; none keeps
 * a pattern of its own. See docs/pool.md ("Names").
 */

/** One rule for every name and name part: lower-case letters, digits and dashes, starting with a letter or digit. */
const namePattern = (maxLength: number) => new RegExp(`^[a-z0-9][a-z0-9-]{0,${maxLength - 1}}$`)

/** A whole VM name: it reaches CLIs, file paths and remote shells. 63 characters: a DNS label. */
export const VM_NAME_PATTERN = namePattern(63)
/** A name prefix (`vitest-worker`); the run id and a suffix follow, so it stays well below a whole name. */
const PREFIX_PATTERN = namePattern(40)
/** A pool lease key (a Vitest slot number, `slot-1`): the suffix of `acquire` names. */
const KEY_PATTERN = namePattern(32)
/** A pool run id sits between prefix and key: no dashes, so a name splits back unambiguously. */
const RUN_ID_PATTERN = /^[a-z0-9]{1,16}$/
/** A workflow prefix or run id: dash-separated words (no leading, trailing or double dash). */
export const NAME_PART_PATTERN = /^[a-z0-9]+(?:-[a-z0-9]+)*$/

export const WORKER_PREFIX = 'vitest-worker'
export const FRESH_PREFIX = 'vitest-fresh'
export const WORKFLOW_PREFIX = 'vm-pool-wf'
/** Other runners' VMs (the pytest plugin in python/): `pytest-worker-<pid>-<unix seconds>`, judged by that pid and time. */
export const PYTEST_WORKER_PREFIX = 'pytest-worker'
/** The pytest plugin's `fresh_vm` VMs: `pytest-fresh-<runId>-<n>`. */
export const PYTEST_FRESH_PREFIX = 'pytest-fresh'
/** VMs a `vm-pool protocol` client leases without naming them: `vm-pool-runner-<runId>-<key or n>`. */
export const RUNNER_PREFIX = 'vm-pool-runner'

/** Name prefixes `vm-pool gc` sweeps by default (each followed by `-`). */
export const SWEEP_PREFIXES: readonly string[] = Object.freeze([WORKER_PREFIX, FRESH_PREFIX, WORKFLOW_PREFIX, PYTEST_WORKER_PREFIX, PYTEST_FRESH_PREFIX, RUNNER_PREFIX, 'test-vm'])

/** `pytest-worker-<pid>-<unix seconds>`: the name is made after the worker started; allow for the whole-second rounding of both clocks. */
const PYTEST_START_SLACK_MS = 2_000

/** Refuse a bad name before any command runs: names reach CLIs, file paths and remote shells. */
export function validateVmName(name: unknown, provider?: string): string {
  if (typeof name !== 'string' || !VM_NAME_PATTERN.test(name)) {
    throw new VmPoolError({
      code: 'VMPOOL_INVALID_NAME',
      provider,
      message: `invalid VM name ${JSON.stringify(name)}: names must match ${VM_NAME_PATTERN.source}`,
      hint: 'use lower-case letters, digits and dashes, at most 63 characters, starting with a letter or digit',
    })
  }
  return name
}

/**
 * An image (or distro) name goes to a CLI as one argv word: refuse what a CLI would read as an option
 * (`--force`) and what cannot be a name (empty, whitespace, control characters).
 */
export function validateImageName(image: string, provider?: string): string {
  if (image === '' || image.startsWith('-') || /[\s\p{Cc}]/u.test(image)) {
    throw new VmPoolError({
      code: 'VMPOOL_INVALID_OPTIONS',
      provider,
      message: `invalid image ${JSON.stringify(image)}: an image name must not be empty, start with "-" or contain whitespace`,
    })
  }
  return image
}

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

/** The one run-id generator (pools, workflows): 8 random hex digits, short enough for names, unique enough between runs on one host. */
export function generateRunId(): string {
  return randomBytes(4).toString('hex')
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
  const match = new RegExp(`^${PYTEST_WORKER_PREFIX}-(\\d{1,10})-(\\d{9,11})$`).exec(name)
  if (!match) return null
  return { pid: Number(match[1]), createdAtMs: Number(match[2]) * 1000 }
}

/** The name of a pytest worker's VM: `pytest-worker-<pid>-<unix seconds>`, the pid of the worker process. */
export function makePytestWorkerName(pid: number, unixSeconds: number): string {
  return validateVmName(`${PYTEST_WORKER_PREFIX}-${pid}-${unixSeconds}`)
}

/** What a VM's name alone says about its owner. */
export interface NamedOwnerVerdict {
  alive: boolean
  /** For people: whose name it is and why it is (not) alive. */
  reason: string
}

/**
 * Does this name say who owns it, and is that owner alive? `null` when the name says nothing (vm-pool's own
 * names carry a run id, not a process: their owners are in the lease table). Reads /proc: call it outside
 * any lock. Today: `pytest-worker-<pid>-<unix time>` is alive while that pid runs and started before the
 * VM was named (a later start means the pid was reused).
 */
export function judgeNamedOwner(name: string): NamedOwnerVerdict | null {
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
 * A name a caller chose for a VM a pool boots (`acquire(key, { name })`): a valid VM name, and not one whose
 * owner `judgeNamedOwner` already calls dead — `vm-pool gc` would delete that VM as soon as no lease knew it,
 * so the pool and gc always agree on such names.
 */
export function validateExplicitName(name: unknown, provider?: string): string {
  const valid = validateVmName(name, provider)
  const verdict = judgeNamedOwner(valid)
  if (verdict && !verdict.alive) {
    throw new VmPoolError({
      code: 'VMPOOL_INVALID_NAME',
      provider,
      operation: 'acquire',
      vm: valid,
      message: `refusing the name ${valid}: ${verdict.reason}, so \`vm-pool gc\` would delete the VM as soon as its lease is gone`,
      hint: 'name it after the live runner process: pytest-worker-<its pid>-<unix time now>',
    })
  }
  return valid
}
