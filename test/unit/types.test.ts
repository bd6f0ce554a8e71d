import { execFileSync } from 'node:child_process'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { expect, test } from 'vitest'

/**
 * The type tests in test/types/ (typed provider names and per-provider options of `vmPool()`, `createPool`'s
 * `keepWarm: true`): tsc fails when a `@ts-expect-error` line type-checks, so a loosened type fails here.
 */
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..')

test('test/types/*.types.ts type-check, and every @ts-expect-error there is an error', { timeout: 120_000 }, () => {
  const tsc = join(REPO, 'node_modules/typescript/bin/tsc')
  let output = ''
  try {
    execFileSync(process.execPath, [tsc, '-p', join(REPO, 'test/types/tsconfig.json')], { cwd: REPO, encoding: 'utf8' })
  } catch (error) {
    output = String((error as { stdout?: string }).stdout ?? error)
  }
  expect(output).toBe('')
})
