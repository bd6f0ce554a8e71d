/**
 * Puts the stand-in CLIs in fixtures/bin (multipass, orbctl) first on PATH for this test process and
 * gives them a fresh state directory. The stand-ins append every invocation to `calls.log` there,
 * so a test can prove that a command never reached the CLI.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join, resolve } from 'node:path'

export const FIXTURE_BIN_DIR = resolve(import.meta.dirname, '../../fixtures/bin')

export interface FixtureCliCall {
  cli: 'multipass' | 'orbctl'
  argv: string[]
}

export interface FixtureCliState {
  /** The stand-ins' state directory (VM_POOL_FIXTURE_STATE). */
  dir: string
  /** Every CLI invocation so far, oldest first. */
  calls(): FixtureCliCall[]
  /** Simulate a stopped daemon (multipass exit 3, orbctl "OrbStack is not running"). */
  setUnavailable(unavailable: boolean): void
  /** Restore PATH / VM_POOL_FIXTURE_STATE and remove the state directory. */
  dispose(): void
}

export function useFixtureCli(): FixtureCliState {
  const dir = mkdtempSync(join(tmpdir(), 'vm-pool-fixture-cli-'))
  const previous = { PATH: process.env.PATH, VM_POOL_FIXTURE_STATE: process.env.VM_POOL_FIXTURE_STATE }
  process.env.PATH = `${FIXTURE_BIN_DIR}${delimiter}${process.env.PATH ?? ''}`
  process.env.VM_POOL_FIXTURE_STATE = dir
  const logPath = join(dir, 'calls.log')
  return {
    dir,
    calls() {
      if (!existsSync(logPath)) return []
      return readFileSync(logPath, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as FixtureCliCall)
    },
    setUnavailable(unavailable) {
      if (unavailable) writeFileSync(join(dir, 'unavailable'), '')
      else rmSync(join(dir, 'unavailable'), { force: true })
    },
    dispose() {
      for (const [key, value] of Object.entries(previous)) {
        if (value === undefined) delete process.env[key]
        else process.env[key] = value
      }
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
