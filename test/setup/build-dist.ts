/**
 * Vitest globalSetup: build dist/ once, before any test file runs, when it is missing or older than src/.
 * Fixture processes, the CLI tests and the pool's watchdog (see `VM_POOL_REAPER_ENTRY` in vitest.config.ts)
 * run the built package. Building here — and never in a test file — means no test rewrites dist/ while
 * another one reads it (seen in CI as EIO from cpSync and as missing exports). `npm test` builds first,
 * so there this is a no-op.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'

const REPO_DIR = resolve(import.meta.dirname, '../..')
export const BUILD_OUTPUTS = ['dist/index.js', 'dist/pool/vm-pool.js', 'dist/pool/reaper-main.js', 'dist/cli/main.js', 'dist/vitest/index.js']

export default function setup(): void {
  if (isDistFresh()) return
  // A type error in a file being edited still emits the rest, so only our outputs are checked afterwards.
  const result = spawnSync(process.execPath, [join(REPO_DIR, 'node_modules/typescript/bin/tsc'), '-p', join(REPO_DIR, 'tsconfig.build.json')], { cwd: REPO_DIR, encoding: 'utf8' })
  for (const file of BUILD_OUTPUTS) {
    if (!existsSync(join(REPO_DIR, file))) throw new Error(`building dist/ did not produce ${file}:\n${result.stdout}${result.stderr}`)
  }
}

function isDistFresh(): boolean {
  const built = BUILD_OUTPUTS.map((file) => {
    try {
      return statSync(join(REPO_DIR, file)).mtimeMs
    } catch {
      return Number.NEGATIVE_INFINITY
    }
  })
  return Math.min(...built) >= newestMtimeMs(join(REPO_DIR, 'src'))
}

function newestMtimeMs(dir: string): number {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    newest = Math.max(newest, entry.isDirectory() ? newestMtimeMs(path) : statSync(path).mtimeMs)
  }
  return newest
}
