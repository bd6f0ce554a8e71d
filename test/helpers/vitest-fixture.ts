import { spawn, type ChildProcess } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { onTestFinished } from 'vitest'
import { childEnded } from './child-ended.ts'

/**
 * Runs real Vitest (a child process) on a fixture project under fixtures/vitest-<name>/, with the
 * fake provider keeping its "VMs" in a temp state dir, and collects what the files recorded.
 *
 * Two Vitest versions: 5 (the repo's devDependency) runs the fixture in place — `vm-pool/vitest`
 * resolves to dist/ by package self-reference. 4.1 comes from fixtures/vitest4 (`npm ci` there);
 * the fixture and a copy of dist/ are placed under fixtures/vitest4/runs/<id>/ so that every
 * `import 'vitest'` (the config's, the test files', and dist's own) resolves to 4.1, never to 5.
 */

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const FIXTURES = join(REPO, 'fixtures')
const VITEST4_DIR = join(FIXTURES, 'vitest4')

export interface VitestBinary {
  /** `5` or `4.1`: shown in test names. */
  label: string
  bin: string
  /** Set when this binary is not installed (then the caller skips or fails, see `getVitestBinaries`). */
  missing?: string
}

/** Vitest 5 always; Vitest 4.1 when fixtures/vitest4 is installed. In CI a missing 4.1 is an error, not a skip. */
export function getVitestBinaries(): VitestBinary[] {
  const v4 = join(VITEST4_DIR, 'node_modules/vitest/vitest.mjs')
  return [
    { label: '5', bin: join(REPO, 'node_modules/vitest/vitest.mjs') },
    {
      label: '4.1',
      bin: v4,
      missing: existsSync(v4) ? undefined : `Vitest 4.1 is not installed: run (cd fixtures/vitest4 && npm ci)`,
    },
  ]
}

export interface FixtureRunOptions {
  vitest: VitestBinary
  /** Extra environment for the fixture config (see fixtures/vitest-common/e2e-config.ts). */
  env?: Record<string, string>
  /** Called once the process runs, e.g. to send it a signal; the run ends when the process exits. */
  onSpawn?: (child: ChildProcess, run: FixtureRun) => void | Promise<void>
}

export interface FixtureRun {
  /** Where `vitest run` ran (the fixture itself, or its copy next to a copy of the package). */
  cwd: string
  stateDir: string
  resultsDir: string
  reportPath: string
  exitCode: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** What each fixture file recorded (fixtures/vitest-common/record.ts), by file name. */
  results(): Record<string, FileRecord>
  report(): Report
  /** Names of the VMs that still exist in the run's state dir (`fake` or `qemu` keep one dir per VM). */
  liveVms(provider?: 'fake' | 'qemu'): string[]
}

export interface FileRecord {
  file: string
  vm: string
  vmFromGuest: string
  poolId: string
  pid: number
  threadId: number
  /** Files that recorded in the same running VM before this one (a trace kept inside the VM). */
  seenBefore: string[]
  fresh?: string[]
  brokerSocket?: string
}

export interface Report {
  runId: string
  created: number
  reused: number
  deleted: number
  leaked: number
  keptWarm: number
  kept: number
  vms: { name: string; kind: 'worker' | 'fresh'; slot: number | null; bootMs: number | null; files: number; state: string; replacedAfterCrash?: boolean }[]
}

/** Generous: several Vitest processes share 2 cores with QEMU guests during the suite. */
export const FIXTURE_RUN_TIMEOUT_MS = 240_000

/** Call inside a test: the Vitest 4.1 project copy is removed when the test finishes. */
export async function runFixture(fixture: string, options: FixtureRunOptions): Promise<FixtureRun> {
  const temp = mkdtempSync(join(tmpdir(), `vm-pool-e2e-${fixture}-`))
  const stateDir = join(temp, 'state')
  const resultsDir = join(temp, 'results')
  const reportPath = join(temp, 'report.json')
  mkdirSync(resultsDir, { recursive: true })
  const { cwd, cleanup } = prepareProject(fixture, options.vitest)
  const env: NodeJS.ProcessEnv = {}
  // The outer Vitest's worker variables must not leak into the inner run; VM_POOL_IMAGE_DIR and
  // VM_POOL_TIMEOUT_SCALE pass through (the QEMU image, slow machines).
  for (const [key, value] of Object.entries(process.env)) if (!/^(VITEST|TEST$|NODE_ENV$|VM_POOL_E2E_|VM_POOL_STATE_DIR$)/.test(key)) env[key] = value
  Object.assign(env, {
    CI: process.env.CI ?? '',
    NO_COLOR: '1',
    FORCE_COLOR: '0',
    VM_POOL_E2E_CACHE_DIR: join(temp, 'cache'),
    VM_POOL_E2E_STATE_DIR: stateDir,
    VM_POOL_E2E_RESULTS: resultsDir,
    VM_POOL_E2E_REPORT: reportPath,
    ...options.env,
  })
  const run: FixtureRun = {
    cwd,
    stateDir,
    resultsDir,
    reportPath,
    exitCode: null,
    signal: null,
    stdout: '',
    stderr: '',
    results() {
      const out: Record<string, FileRecord> = {}
      for (const name of readdirSync(resultsDir).filter((n) => n.endsWith('.json'))) {
        const record = JSON.parse(readFileSync(join(resultsDir, name), 'utf8')) as FileRecord
        out[record.file] = record
      }
      return out
    },
    report: () => JSON.parse(readFileSync(reportPath, 'utf8')) as Report,
    liveVms: (provider = 'fake') =>
      existsSync(join(stateDir, provider))
        ? readdirSync(join(stateDir, provider), { withFileTypes: true })
            .filter((entry) => entry.isDirectory())
            .map((entry) => entry.name)
            .sort()
        : [],
  }
  // Its own process group: a Ctrl-C test signals the whole group, as a terminal does.
  const child = spawn(process.execPath, [options.vitest.bin, 'run'], { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (run.stdout += chunk))
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (run.stderr += chunk))
  const exited = childEnded(child).then(({ code, signal }) => {
    run.exitCode = code
    run.signal = signal
  })
  const timer = setTimeout(() => killGroup(child), FIXTURE_RUN_TIMEOUT_MS)
  try {
    await options.onSpawn?.(child, run)
    await exited
  } finally {
    clearTimeout(timer)
    killGroup(child)
    // Not before the test ends: after a kill, the reaper still loads provider code from this copy.
    onTestFinished(() => {
      cleanup()
      removeIfNothingLeft(temp, stateDir)
    })
  }
  return run
}

/**
 * The run's temp dir goes once nothing in its state dir is still someone's: no VM dir and no watchdog marker
 * (a run killed on purpose may still be reaped). Otherwise it stays, for `vm-pool gc` and for a look.
 */
function removeIfNothingLeft(temp: string, stateDir: string): void {
  const entries = (dir: string) => (existsSync(dir) ? readdirSync(dir, { withFileTypes: true }) : [])
  const markers = entries(join(stateDir, 'reapers')).filter((entry) => entry.name.endsWith('.json'))
  const vms = ['fake', 'qemu'].flatMap((provider) => entries(join(stateDir, provider)).filter((entry) => entry.isDirectory()))
  if (markers.length === 0 && vms.length === 0) rmSync(temp, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 })
}

/** Wait for `condition`, polling; a deadline, not a timed assertion: fast machines return early. */
export async function waitFor(condition: () => boolean, what: string, deadlineMs = 60_000): Promise<void> {
  const end = Date.now() + deadlineMs
  while (!condition()) {
    if (Date.now() > end) throw new Error(`waited ${deadlineMs} ms for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** Everything the run started that is still there (workers, the reaper keeps its own group). */
function killGroup(child: ChildProcess): void {
  if (!child.pid) return
  try {
    process.kill(-child.pid, 'SIGKILL')
  } catch {
    // already gone
  }
}

function prepareProject(fixture: string, vitest: VitestBinary): { cwd: string; cleanup: () => void } {
  const source = join(FIXTURES, `vitest-${fixture}`)
  // A fixture with its own package.json is its own project (fixtures/vitest-cjs): it must load the
  // package through node_modules and the package's `exports`, never by self-reference.
  const ownPackage = existsSync(join(source, 'package.json'))
  if (vitest.label !== '4.1' && !ownPackage) return { cwd: source, cleanup: () => {} }
  const runs = vitest.label === '4.1' ? join(VITEST4_DIR, 'runs') : join(FIXTURES, 'vitest5-runs')
  mkdirSync(runs, { recursive: true })
  const root = mkdtempSync(join(runs, `${fixture}-`))
  const pkg = join(root, 'node_modules/vm-pool')
  mkdirSync(pkg, { recursive: true })
  cpSync(join(REPO, 'package.json'), join(pkg, 'package.json'))
  cpSync(join(REPO, 'dist'), join(pkg, 'dist'), { recursive: true })
  cpSync(join(FIXTURES, 'vitest-common'), join(root, 'vitest-common'), { recursive: true })
  cpSync(source, join(root, `vitest-${fixture}`), { recursive: true })
  return { cwd: join(root, `vitest-${fixture}`), cleanup: () => rmSync(root, { recursive: true, force: true }) }
}
