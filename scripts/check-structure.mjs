#!/usr/bin/env node
/**
 * `npm run check:structure` (part of `npm test`): the house rules that keep src/ easy to read.
 * `node scripts/check-structure.mjs [DIR]` checks DIR/src instead (test/unit/structure-rules.test.ts).
 * 1. The layer rule (docs/architecture.md), checked by dependency-cruiser with .dependency-cruiser.cjs:
 *    an upward import, an import between the edges, or a cycle fails.
 * 2. No file in src/ over MAX_LINES lines unless its first comment says why (a line starting with
 *    `Why this file is long:`).
 */
import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { join, relative, resolve } from 'node:path'

const REPO = resolve(import.meta.dirname, '..')
const ROOT = resolve(process.argv[2] ?? REPO)
const MAX_LINES = 350
const LONG_REASON = /^\s*(\*|\/\/)\s*Why this file is long:/m

let failed = false

const cruiser = spawnSync(process.execPath, [join(REPO, 'node_modules/dependency-cruiser/bin/dependency-cruiser.mjs'), 'src', '--config', join(REPO, '.dependency-cruiser.cjs'), '--output-type', 'err'], { cwd: ROOT, encoding: 'utf8' })
// dependency-cruiser warns that it cannot use TypeScript 7's compiler; it parses with swc instead (see the config).
const output = `${cruiser.stdout}${cruiser.stderr}`.replace(/\n?‼ missing-tsc-transpiler:[\s\S]*?will follow when its API is published and stable\.\n?/, '\n').trim()
if (cruiser.status !== 0) {
  failed = true
  process.stderr.write(`layer check failed (docs/architecture.md, .dependency-cruiser.cjs):\n${output}\n`)
} else {
  process.stdout.write(`layers: ${output || 'no violations'}\n`)
}

const walk = (dir) => readdirSync(dir, { withFileTypes: true }).flatMap((entry) => (entry.isDirectory() ? walk(join(dir, entry.name)) : [join(dir, entry.name)]))
for (const file of walk(join(ROOT, 'src')).filter((path) => path.endsWith('.ts'))) {
  const text = readFileSync(file, 'utf8')
  const lines = text.split('\n').length
  const head = text.slice(0, 2_000)
  if (lines > MAX_LINES && !LONG_REASON.test(head)) {
    failed = true
    process.stderr.write(`${relative(ROOT, file)}: ${lines} lines (over ${MAX_LINES}) and no "Why this file is long:" line in its first comment\n`)
  }
}
process.exitCode = failed ? 1 : 0
