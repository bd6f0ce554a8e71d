/**
 * Runs real pytest (Debian's python3-pytest and python3-pytest-xdist) on a fixture project under
 * fixtures/pytest-<name>/, with the plugin from python/ installed the way users install it (pip builds it,
 * pytest finds it through its `pytest11` entry point) and the helper from dist/. The fake provider keeps its
 * "VMs" in a temp state dir so the test can see what is left.
 *
 * Which Python: VM_POOL_TEST_PYTHON, else /usr/bin/python3, else python3 on PATH — the first that imports
 * pytest and xdist. None: the tests skip with the reason, except in CI (CI=true), where that is an error.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createHash, type Hash } from 'node:crypto'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { onTestFinished } from 'vitest'
import { childEnded } from './child-ended.ts'

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const FIXTURES = join(REPO, 'fixtures')
export const CLI = join(REPO, 'dist/cli/main.js')
/** Generous: pytest, xdist workers, helpers and the pip build share 2 cores with QEMU guests during the suite. */
export const PYTEST_RUN_TIMEOUT_MS = 300_000

export interface PytestFinding {
  python?: string
  version?: string
  missing?: string
}

let finding: PytestFinding | undefined

/** The Python that has pytest and pytest-xdist; in CI a missing one throws. */
export function findPytest(): PytestFinding {
  if (finding) return finding
  const candidates = [process.env.VM_POOL_TEST_PYTHON, '/usr/bin/python3', 'python3'].filter((candidate): candidate is string => Boolean(candidate))
  for (const python of candidates) {
    const probe = spawnSync(python, ['-c', 'import pytest, xdist; print(pytest.__version__, xdist.__version__)'], { encoding: 'utf8' })
    if (probe.status === 0) return (finding = { python, version: probe.stdout.trim() })
  }
  const missing = `no Python with pytest and pytest-xdist (tried ${candidates.join(', ')}): apt-get install python3-pytest python3-pytest-xdist python3-pip python3-setuptools python3-wheel`
  if (process.env.CI === 'true') throw new Error(`CI must run the pytest tests, but there is ${missing}`)
  console.warn(`skipping the pytest tests: ${missing}`)
  return (finding = { missing })
}

let installed: Promise<string> | undefined

/**
 * pip builds python/ (a copy: the build writes build/ and *.egg-info next to the sources) and installs it
 * into a directory that goes on PYTHONPATH: the `pytest11` entry point is what loads the plugin. The result is
 * cached by the hash of python/ in node_modules/.cache/ (renamed into place, so parallel test files never see
 * half an install): every test file of a run shares one build.
 */
export function installPlugin(python: string): Promise<string> {
  installed ??= (async () => {
    const hash = hashTree(join(REPO, 'python'), createHash('sha256').update(python)).digest('hex').slice(0, 16)
    const cache = join(REPO, 'node_modules/.cache/vm-pool-pytest')
    const site = join(cache, hash)
    if (existsSync(site)) return site
    mkdirSync(cache, { recursive: true })
    const work = mkdtempSync(join(cache, 'build-'))
    try {
      const source = join(work, 'src')
      cpSync(join(REPO, 'python'), source, { recursive: true, filter: (path) => !/(\/build|\.egg-info|__pycache__)$/.test(path) })
      const result = await runQuiet(python, ['-m', 'pip', 'install', '--quiet', '--no-deps', '--no-build-isolation', '--no-index', '--root-user-action=ignore', '--target', join(work, 'site'), source])
      if (result.code !== 0) throw new Error(`pip could not install python/ (exit ${result.code}): ${result.output}`)
      try {
        renameSync(join(work, 'site'), site)
      } catch (error) {
        // Another test file finished the same build first: use it.
        if (!existsSync(site)) throw error
      }
      return site
    } finally {
      rmSync(work, { recursive: true, force: true })
    }
  })()
  return installed
}

function hashTree(dir: string, hash: Hash): Hash {
  for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    if (/^(build|__pycache__)$|\.egg-info$/.test(entry.name)) continue
    const path = join(dir, entry.name)
    hash.update(entry.name)
    if (entry.isDirectory()) hashTree(path, hash)
    else hash.update(readFileSync(path))
  }
  return hash
}

export interface PytestRunOptions {
  python: string
  args?: string[]
  /** Environment over the defaults below (set a key to '' to remove it). */
  env?: Record<string, string>
  /** Share a state dir with an earlier run (warm VMs); default: a new one. */
  stateDir?: string
  /** `fake` (default: "VMs" are directories, 200 ms boots) or `qemu` (real VMs; the image is found in the shared image dir). */
  provider?: 'fake' | 'qemu'
  /** Called once pytest runs, e.g. to signal it; the run ends when it exits. */
  onSpawn?: (child: ChildProcess, run: PytestRun) => void | Promise<void>
}

export interface PytestRun {
  dir: string
  stateDir: string
  resultsDir: string
  exitCode: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** What each test recorded (fixtures/pytest-slots/tests/vm_record.py), by test name. */
  results(): Record<string, TestRecord>
  /** Fake VMs that still exist in the state dir. */
  liveVms(provider?: 'fake' | 'qemu'): string[]
  /** The helper's argv for `vm-pool` commands on this run's state (gc, ls). */
  output(): string
}

export interface TestRecord {
  test: string
  vm: string
  adopted: boolean
  vmFromGuest: string
  bootId: string
  seenBefore: string[]
  pid: number
  worker: string
  fresh?: string
  freshFromGuest?: string | null
}

/** `node dist/cli/main.js`, quoted for the plugin's shell-like split of VM_POOL_HELPER. */
export const HELPER_COMMAND = `'${process.execPath}' '${CLI}'`

/** `project`: a folder name under fixtures/ without its `pytest-` prefix, or an absolute path (copied either way). */
export async function runPytest(project: string, options: PytestRunOptions): Promise<PytestRun> {
  const site = await installPlugin(options.python)
  const dir = mkdtempSync(join(tmpdir(), `vm-pool-pytest-${project.startsWith('/') ? 'project' : project}-`))
  // Call runPytest inside a test: its files go when the test ends (a kill test's reaper may still be reading them before).
  onTestFinished(() => rmSync(dir, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 }))
  const projectDir = join(dir, 'project')
  cpSync(project.startsWith('/') ? project : join(FIXTURES, `pytest-${project}`), projectDir, { recursive: true })
  const stateDir = options.stateDir ?? join(dir, 'state')
  const resultsDir = join(dir, 'results')
  mkdirSync(resultsDir, { recursive: true })
  const env: NodeJS.ProcessEnv = {}
  // The outer Vitest's and any outer pytest's variables stay out; VM_POOL_IMAGE_DIR and VM_POOL_TIMEOUT_SCALE pass.
  for (const [key, value] of Object.entries(process.env)) if (!/^(VITEST|PYTEST|TEST$|NODE_ENV$|VM_POOL_(E2E_|STATE_DIR$|PROVIDER|HELPER$)|PYTHON)/.test(key)) env[key] = value
  Object.assign(env, {
    PYTHONPATH: site,
    PYTHONDONTWRITEBYTECODE: '1',
    NO_COLOR: '1',
    VM_POOL_HELPER: HELPER_COMMAND,
    VM_POOL_PROVIDER: options.provider ?? 'fake',
    VM_POOL_PROVIDER_OPTIONS: JSON.stringify(options.provider === 'qemu' ? { stateDir } : { stateDir, bootDelayMs: 200 }),
    VM_POOL_E2E_RESULTS: resultsDir,
    ...options.env,
  })
  for (const [key, value] of Object.entries(env)) if (value === '') delete env[key]
  const run: PytestRun = {
    dir,
    stateDir,
    resultsDir,
    exitCode: null,
    signal: null,
    stdout: '',
    stderr: '',
    results() {
      const out: Record<string, TestRecord> = {}
      for (const name of readdirSync(resultsDir).filter((n) => n.endsWith('.json'))) {
        const record = JSON.parse(readFileSync(join(resultsDir, name), 'utf8')) as TestRecord
        out[record.test] = record
      }
      return out
    },
    liveVms: (provider = 'fake') =>
      existsSync(join(stateDir, provider))
        ? readdirSync(join(stateDir, provider), { withFileTypes: true })
            .filter((entry) => entry.isDirectory())
            .map((entry) => entry.name)
            .sort()
        : [],
    output: () => `exit ${run.exitCode} ${run.signal ?? ''}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`,
  }
  // Its own process group: a Ctrl-C test signals the whole group, as a terminal does.
  const child = spawn(options.python, ['-m', 'pytest', '-p', 'no:cacheprovider', ...(options.args ?? [])], { cwd: projectDir, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (run.stdout += chunk))
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (run.stderr += chunk))
  const exited = childEnded(child).then(({ code, signal }) => {
    run.exitCode = code
    run.signal = signal
  })
  const timer = setTimeout(() => killGroup(child), PYTEST_RUN_TIMEOUT_MS)
  try {
    await options.onSpawn?.(child, run)
    await exited
  } finally {
    clearTimeout(timer)
    killGroup(child)
  }
  return run
}

/** `vm-pool <args>` on a run's state dir with the fake provider, e.g. `gc --json`. */
export async function runVmPool(args: string[], stateDir: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const result = await runQuiet(process.execPath, [CLI, ...args], { ...process.env, VM_POOL_PROVIDER: 'fake', VM_POOL_PROVIDER_OPTIONS: JSON.stringify({ stateDir }), VM_POOL_STATE_DIR: stateDir })
  return { code: result.code, stdout: result.stdout, stderr: result.stderr }
}

/** Wait for `condition`, polling; a deadline, not a timed assertion. */
export async function waitFor(condition: () => boolean, what: string, deadlineMs = 60_000): Promise<void> {
  const end = Date.now() + deadlineMs
  while (!condition()) {
    if (Date.now() > end) throw new Error(`waited ${deadlineMs} ms for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

export function isPidRunning(pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  // A zombie (exited, not reaped by its parent yet) is not running.
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

function killGroup(child: ChildProcess): void {
  if (!child.pid) return
  try {
    process.kill(-child.pid, 'SIGKILL')
  } catch {
    // already gone
  }
}

function runQuiet(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number | null; stdout: string; stderr: string; output: string }> {
  return new Promise((done, fail) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
    child.once('error', fail)
    void childEnded(child).then(({ code }) => done({ code, stdout, stderr, output: `${stdout}${stderr}` }))
  })
}
