import { createHash } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, renameSync } from 'node:fs'
import { dirname, join } from 'node:path'
import type { DatabaseSync } from 'node:sqlite'
import { getStateDir } from '../../util/state-dir.js'
import { loadSqlite } from './load-sqlite.js'

/**
 * Every command a workflow ran — workflow, job, step, a hash of the command (never its text: commands
 * may carry tokens), exit code, duration, VM, time — in a local SQLite file (`node:sqlite`), for
 * `vm-pool history` and for the "this step failed 4 of its last 10 runs" line of `vm-pool run`.
 * Several processes may write at once (WAL, a busy timeout). The oldest rows are pruned past
 * `maxRows`. A file that is not a readable database is moved aside and a new one started, said once.
 */

/** Rows kept; older ones are deleted as new ones arrive (about 100 bytes each). */
export const DEFAULT_HISTORY_MAX_ROWS = 100_000

/** How long a write waits for another process holding the database lock. */
export const HISTORY_BUSY_TIMEOUT_MS = 5_000

/** Bumped when the table changes; a file with another version is moved aside like a corrupt one. */
const SCHEMA_VERSION = 1

// SQLITE_CORRUPT and SQLITE_NOTADB: the file is not a (whole) database.
const CORRUPT_CODES = new Set([11, 26])

/** `VM_POOL_HISTORY_DB` (a path, or `off`), else `<state dir>/history.sqlite`; undefined when off. */
export function getHistoryPath(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const value = env.VM_POOL_HISTORY_DB
  if (value === 'off') return undefined
  return value ? value : join(getStateDir(undefined, env), 'history.sqlite')
}

export interface CommandRecord {
  workflow: string
  /** The job (a GitHub matrix cell's label, e.g. `build (debian, 20)`); '' for vm-pool workflow files. */
  job: string
  step: string
  /** Hashed before it is stored. */
  command: string
  exitCode: number
  passed: boolean
  durationMs: number
  vm: string
  /** @default now */
  at?: Date
}

export interface StepStats {
  workflow: string
  job: string
  step: string
  runs: number
  passed: number
  failed: number
  /** passed / runs, 0..1. */
  successRate: number
  avgDurationMs: number
  maxDurationMs: number
  lastRunAt: string
}

/** A step that both passed and failed running the same command. */
export interface FlakyStep {
  workflow: string
  job: string
  step: string
  commandHash: string
  runs: number
  passed: number
  failed: number
  lastRunAt: string
}

export interface OpenHistoryOptions {
  /** @default getHistoryPath() */
  path?: string
  /** @default DEFAULT_HISTORY_MAX_ROWS */
  maxRows?: number
  /** Told when a corrupt file was moved aside (the CLI prints it on stderr). */
  onNotice?: (message: string) => void
}

export function hashCommand(command: string): string {
  return createHash('sha256').update(command).digest('hex').slice(0, 16)
}

export class CommandHistory {
  readonly path: string
  readonly maxRows: number
  readonly #db: DatabaseSync

  private constructor(path: string, maxRows: number, db: DatabaseSync) {
    this.path = path
    this.maxRows = maxRows
    this.#db = db
  }

  static open(options: OpenHistoryOptions = {}): CommandHistory {
    const path = options.path ?? getHistoryPath() ?? join(getStateDir(), 'history.sqlite')
    const maxRows = options.maxRows ?? DEFAULT_HISTORY_MAX_ROWS
    const { DatabaseSync } = loadSqlite()
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
    let db: DatabaseSync | undefined
    try {
      db = new DatabaseSync(path)
      prepare(db)
    } catch (error) {
      db?.close()
      const reason = corruptReason(error)
      if (reason === undefined) throw error
      const aside = `${path}.corrupt-${new Date().toISOString().replaceAll(':', '-')}`
      for (const suffix of ['', '-wal', '-shm']) if (existsSync(path + suffix)) renameSync(path + suffix, aside + suffix)
      options.onNotice?.(`vm-pool: the command history ${path} could not be read (${reason}); moved it to ${aside} and started a new one`)
      db = new DatabaseSync(path)
      prepare(db)
    }
    // Step names and job labels are private enough: readable by this user only.
    chmodSync(path, 0o600)
    return new CommandHistory(path, maxRows, db)
  }

  record(entry: CommandRecord): void {
    const at = (entry.at ?? new Date()).toISOString()
    this.#db
      .prepare('INSERT INTO commands (recorded_at, workflow, job, step, command_hash, exit_code, passed, duration_ms, vm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')
      .run(at, entry.workflow, entry.job, entry.step, hashCommand(entry.command), entry.exitCode, entry.passed ? 1 : 0, Math.round(entry.durationMs), entry.vm)
    this.#db.prepare('DELETE FROM commands WHERE id <= (SELECT MAX(id) FROM commands) - ?').run(this.maxRows)
  }

  /** Of the last `last` runs of a step (this one included), how many failed. */
  recentFailures(key: { workflow: string; job: string; step: string }, last = 10): { failed: number; runs: number } {
    const rows = this.#db.prepare('SELECT passed FROM commands WHERE workflow = ? AND job = ? AND step = ? ORDER BY id DESC LIMIT ?').all(key.workflow, key.job, key.step, last) as Array<{ passed: number }>
    return { failed: rows.filter((row) => row.passed === 0).length, runs: rows.length }
  }

  /** Every step with its success rate and durations. */
  stepStats(): StepStats[] {
    const rows = this.#db
      .prepare(
        `SELECT workflow, job, step, COUNT(*) AS runs, SUM(passed) AS passed, AVG(duration_ms) AS avg, MAX(duration_ms) AS max, MAX(recorded_at) AS last
         FROM commands GROUP BY workflow, job, step ORDER BY workflow, job, MIN(id)`,
      )
      .all() as Array<{ workflow: string; job: string; step: string; runs: number; passed: number; avg: number; max: number; last: string }>
    return rows.map((row) => ({
      workflow: row.workflow,
      job: row.job,
      step: row.step,
      runs: row.runs,
      passed: row.passed,
      failed: row.runs - row.passed,
      successRate: row.runs === 0 ? 0 : row.passed / row.runs,
      avgDurationMs: Math.round(row.avg),
      maxDurationMs: row.max,
      lastRunAt: row.last,
    }))
  }

  /** Steps that passed and failed with the same command: most failures first. */
  flakySteps(): FlakyStep[] {
    const rows = this.#db
      .prepare(
        `SELECT workflow, job, step, command_hash AS hash, COUNT(*) AS runs, SUM(passed) AS passed, MAX(recorded_at) AS last
         FROM commands GROUP BY workflow, job, step, command_hash
         HAVING SUM(passed) > 0 AND SUM(passed) < COUNT(*)
         ORDER BY COUNT(*) - SUM(passed) DESC, workflow, job, step`,
      )
      .all() as Array<{ workflow: string; job: string; step: string; hash: string; runs: number; passed: number; last: string }>
    return rows.map((row) => ({ workflow: row.workflow, job: row.job, step: row.step, commandHash: row.hash, runs: row.runs, passed: row.passed, failed: row.runs - row.passed, lastRunAt: row.last }))
  }

  /** The slowest steps by average duration. */
  slowSteps(limit = 10): StepStats[] {
    return this.stepStats()
      .sort((a, b) => b.avgDurationMs - a.avgDurationMs)
      .slice(0, limit)
  }

  /** Rows stored now (at most `maxRows`). */
  count(): number {
    return (this.#db.prepare('SELECT COUNT(*) AS n FROM commands').get() as { n: number }).n
  }

  close(): void {
    if (this.#db.isOpen) this.#db.close()
  }
}

function prepare(db: DatabaseSync): void {
  db.exec(`PRAGMA busy_timeout = ${HISTORY_BUSY_TIMEOUT_MS}`)
  const version = (db.prepare('PRAGMA user_version').get() as { user_version: number }).user_version
  if (version !== 0 && version !== SCHEMA_VERSION) throw Object.assign(new Error(`schema version ${version}, expected ${SCHEMA_VERSION}`), { errcode: 26 })
  const check = (db.prepare('PRAGMA quick_check').get() as { quick_check: string }).quick_check
  if (check !== 'ok') throw Object.assign(new Error(`integrity check: ${check}`), { errcode: 11 })
  db.exec(`
    PRAGMA journal_mode = WAL;
    CREATE TABLE IF NOT EXISTS commands (
      id INTEGER PRIMARY KEY AUTOINCREMENT,
      recorded_at TEXT NOT NULL,
      workflow TEXT NOT NULL,
      job TEXT NOT NULL,
      step TEXT NOT NULL,
      command_hash TEXT NOT NULL,
      exit_code INTEGER NOT NULL,
      passed INTEGER NOT NULL,
      duration_ms INTEGER NOT NULL,
      vm TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS commands_by_step ON commands (workflow, job, step, id);
    PRAGMA user_version = ${SCHEMA_VERSION};
  `)
}

function corruptReason(error: unknown): string | undefined {
  const { errcode, message } = error as { errcode?: number; message?: string }
  if ((errcode !== undefined && CORRUPT_CODES.has(errcode)) || /not a database|malformed|corrupt/i.test(message ?? '')) return message ?? 'not a database'
  return undefined
}
