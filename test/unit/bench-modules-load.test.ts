import { execFile } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import { expect, test } from 'vitest'

/**
 * `npm run bench` runs bench/*.ts under plain Node (type stripping, no Vite resolver), so a `.js`
 * specifier for a `.ts` file, which Vitest resolves, fails there at import time. Each section module
 * is imported here the way bench/run.ts imports it, and so is each test helper a section imports when
 * it runs. run.ts itself is left out: importing it runs the benchmarks. Needs dist/ (test/setup/build-dist.ts
 * builds it).
 */
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const modules = readdirSync(join(REPO, 'bench')).filter((name) => name.endsWith('.ts') && name !== 'run.ts')
// Test helpers a section imports when it runs (`await import('../test/helpers/x.ts')`), not when it loads.
const helpers = [...new Set(modules.flatMap((name) => [...readFileSync(join(REPO, 'bench', name), 'utf8').matchAll(/import\('(\.\.\/test\/helpers\/[\w.-]+)'\)/g)].map((match) => match[1]!)))]
const loaded = [...modules.map((name) => `bench/${name}`), ...helpers.map((path) => join('bench', path))]

test.each(loaded)('%s loads under plain Node', { timeout: 60_000 }, async (path) => {
  const url = pathToFileURL(join(REPO, path)).href
  const { stderr } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', `await import(${JSON.stringify(url)})`], { cwd: REPO, env: { ...process.env, NODE_OPTIONS: '' } })
    .catch((error: { stderr?: string; message: string }) => ({ stderr: `FAILED: ${error.stderr ?? error.message}` }))
  expect(stderr).not.toMatch(/FAILED|Cannot find module|ERR_/)
})

test('the bench has section modules to load', () => {
  expect(modules).toContain('protocol.ts')
  expect(modules.length).toBeGreaterThan(4)
  expect(loaded).toContain('test/helpers/postgres.ts')
})
