import { mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, expect, test } from 'vitest'
import { pruneReaperLogs, REAPER_LOG_MAX_AGE_MS, REAPER_LOG_MAX_COUNT } from '../../src/pool/reaper-log-prune.js'
import { ReaperHandle } from '../../src/pool/reaper.js'

let stateDir: string
afterEach(() => rmSync(stateDir, { recursive: true, force: true }))

test('reaper logs past the age or beyond the count go, oldest first; markers stay', async () => {
  stateDir = mkdtempSync(join(tmpdir(), 'vm-pool-reaper-logs-'))
  const dir = join(stateDir, 'reapers')
  mkdirSync(dir)
  const now = Date.now()
  const write = (name: string, ageMs: number) => {
    writeFileSync(join(dir, name), 'x\n')
    utimesSync(join(dir, name), new Date(now - ageMs), new Date(now - ageMs))
  }
  write('old-1.log', REAPER_LOG_MAX_AGE_MS + 60_000)
  write('old-1.json', REAPER_LOG_MAX_AGE_MS + 60_000) // a marker: never a log to prune
  for (let i = 0; i < REAPER_LOG_MAX_COUNT + 3; i++) write(`run${i}-1.log`, i * 1000)
  const removed = await pruneReaperLogs(stateDir, now)
  expect(removed.map((path) => path.slice(dir.length + 1)).sort()).toEqual(['old-1.log', ...[0, 1, 2].map((i) => `run${REAPER_LOG_MAX_COUNT + i}-1.log`)].sort())
  const left = readdirSync(dir)
  expect(left).toContain('old-1.json')
  expect(left.filter((name) => name.endsWith('.log'))).toHaveLength(REAPER_LOG_MAX_COUNT)
  expect(left).toContain('run0-1.log')
})

test('starting a watchdog prunes the logs', async () => {
  stateDir = mkdtempSync(join(tmpdir(), 'vm-pool-reaper-logs-'))
  const dir = join(stateDir, 'reapers')
  mkdirSync(dir)
  writeFileSync(join(dir, 'ancient-9.log'), 'x\n')
  utimesSync(join(dir, 'ancient-9.log'), new Date(Date.now() - REAPER_LOG_MAX_AGE_MS - 60_000), new Date(Date.now() - REAPER_LOG_MAX_AGE_MS - 60_000))
  const handle = await ReaperHandle.start({ runId: 'prune01', providerName: 'fake', providerOptions: { stateDir }, stateDir })
  try {
    expect(readdirSync(dir)).not.toContain('ancient-9.log')
  } finally {
    await handle.stop()
  }
})
