import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, test } from 'vitest'
import { CommandHistory, getHistoryPath, hashCommand } from '../../src/workflow/history/command-history.js'
import { createHistoryRecorder } from '../../src/workflow/history/history-recorder.js'
import type { StepResult } from '../../src/workflow/run-workflow.js'

let dir: string
let history: CommandHistory | undefined

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vm-pool-history-'))
})

afterEach(async () => {
  history?.close()
  history = undefined
  await rm(dir, { recursive: true, force: true })
})

const step = (name: string, exitCode: number, extra: Partial<StepResult> = {}): StepResult => ({ phase: 'step', name, command: `run ${name}`, exitCode, stdout: '', stderr: '', durationMs: 10, vm: 'vm-1', ...extra })

describe('CommandHistory', () => {
  test('lives under the state dir unless VM_POOL_HISTORY_DB says otherwise (or off)', () => {
    expect(getHistoryPath({ VM_POOL_STATE_DIR: '/tmp/state' })).toBe('/tmp/state/history.sqlite')
    expect(getHistoryPath({ VM_POOL_STATE_DIR: '/tmp/state', VM_POOL_HISTORY_DB: '/tmp/h.db' })).toBe('/tmp/h.db')
    expect(getHistoryPath({ VM_POOL_HISTORY_DB: 'off' })).toBeUndefined()
  })

  test('records commands as hashes; stats, flaky steps (same command passed and failed) and slow steps', async () => {
    history = CommandHistory.open({ path: join(dir, 'h.sqlite') })
    const record = (stepName: string, command: string, passed: boolean, durationMs: number) =>
      history!.record({ workflow: 'ci', job: 'build (a, 1)', step: stepName, command, exitCode: passed ? 0 : 1, passed, durationMs, vm: 'vm-1' })
    for (const passed of [true, false, true, false, false]) record('lint', 'npm run lint', passed, 5)
    record('compile', 'make', true, 500)
    record('compile', 'make', true, 700)
    // The command changed between a failure and a pass: not flaky, a fix.
    record('test', 'npm test --bail', false, 50)
    record('test', 'npm test', true, 50)

    expect(history.flakySteps()).toEqual([{ workflow: 'ci', job: 'build (a, 1)', step: 'lint', commandHash: hashCommand('npm run lint'), runs: 5, passed: 2, failed: 3, lastRunAt: expect.any(String) }])
    const stats = history.stepStats()
    expect(stats.map((s) => [s.step, s.runs, s.passed, s.failed])).toEqual([
      ['lint', 5, 2, 3],
      ['compile', 2, 2, 0],
      ['test', 2, 1, 1],
    ])
    expect(stats[0]!.successRate).toBeCloseTo(0.4)
    expect(history.slowSteps(1).map((s) => [s.step, s.avgDurationMs, s.maxDurationMs])).toEqual([['compile', 600, 700]])
    expect(history.recentFailures({ workflow: 'ci', job: 'build (a, 1)', step: 'lint' }, 3)).toEqual({ failed: 2, runs: 3 })
    // The file is this user's only, and holds no command text.
    expect((await stat(history.path)).mode & 0o777).toBe(0o600)
    history.close()
    expect((await readFile(history.path)).includes(Buffer.from('npm run lint'))).toBe(false)
  })

  test('bounded: the oldest rows are pruned past maxRows', () => {
    history = CommandHistory.open({ path: join(dir, 'h.sqlite'), maxRows: 5 })
    for (let i = 0; i < 12; i++) history.record({ workflow: 'w', job: '', step: `s${i}`, command: 'x', exitCode: 0, passed: true, durationMs: 1, vm: 'v' })
    expect(history.count()).toBe(5)
    expect(history.stepStats().map((s) => s.step)).toEqual(['s7', 's8', 's9', 's10', 's11'])
  })

  test('a corrupt file is moved aside, a new history started, and the user told', async () => {
    const path = join(dir, 'h.sqlite')
    await writeFile(path, Buffer.concat([Buffer.from('SQLite format 3\0'), Buffer.alloc(4096, 7)]))
    const notices: string[] = []
    history = CommandHistory.open({ path, onNotice: (message) => notices.push(message) })
    expect(notices).toHaveLength(1)
    expect(notices[0]).toMatch(/could not be read \(.*not a database.*\); moved it to .*h\.sqlite\.corrupt-.* and started a new one/)
    history.record({ workflow: 'w', job: '', step: 's', command: 'x', exitCode: 0, passed: true, durationMs: 1, vm: 'v' })
    expect(history.count()).toBe(1)
    const files = await readdir(dir)
    expect(files.filter((file) => file.startsWith('h.sqlite.corrupt-'))).toHaveLength(1)
    // Opening it again is quiet: it is a good database now.
    history.close()
    history = CommandHistory.open({ path, onNotice: (message) => notices.push(message) })
    expect(notices).toHaveLength(1)
    expect(history.count()).toBe(1)
  })

  test('the recorder returns the "failed N of its last M runs" line for failures only, from the second run on', () => {
    history = CommandHistory.open({ path: join(dir, 'h.sqlite') })
    const recorder = createHistoryRecorder(history)
    expect(recorder('ci', 'test', step('unit', 1))).toBeUndefined()
    expect(recorder('ci', 'test', step('unit', 0))).toBeUndefined()
    expect(recorder('ci', 'test', step('unit', 2))).toBe('this step failed 2 of its last 3 runs')
    expect(recorder('ci', 'test', step('unit', -1, { skipped: true }))).toBeUndefined()
    expect(history.count()).toBe(3)
  })

  test('a history that breaks is reported once and the run goes on', () => {
    history = CommandHistory.open({ path: join(dir, 'h.sqlite') })
    history.close()
    const notices: string[] = []
    const recorder = createHistoryRecorder(history, (message) => notices.push(message))
    expect(recorder('ci', 'test', step('unit', 1))).toBeUndefined()
    expect(recorder('ci', 'test', step('unit', 1))).toBeUndefined()
    expect(notices).toEqual([expect.stringMatching(/^vm-pool: the command history stopped recording: /)])
  })
})
