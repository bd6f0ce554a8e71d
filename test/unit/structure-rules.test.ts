/**
 * The structure check that `npm test` runs (scripts/check-structure.mjs): it must fail on the things it
 * exists to stop. Each case is a small src/ tree in a temp dir, checked with the repo's own rules.
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'

const REPO = resolve(import.meta.dirname, '../..')
const roots: string[] = []

function check(files: Record<string, string>) {
  const root = mkdtempSync(join(tmpdir(), 'vmp-structure-'))
  roots.push(root)
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true })
    writeFileSync(join(root, path), text)
  }
  writeFileSync(join(root, 'tsconfig.build.json'), JSON.stringify({ compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext' }, include: ['src'] }))
  symlinkSync(join(REPO, 'node_modules'), join(root, 'node_modules'))
  const run = spawnSync(process.execPath, [join(REPO, 'scripts/check-structure.mjs'), root], { encoding: 'utf8', timeout: 120_000 })
  return { status: run.status, output: `${run.stdout}${run.stderr}` }
}

afterAll(() => {
  for (const root of roots) rmSync(root, { recursive: true, force: true })
})

describe('scripts/check-structure.mjs', () => {
  test('a tree that keeps the layers passes', () => {
    const result = check({
      'src/util/name.ts': 'export const name = 1\n',
      'src/pool/pool.ts': "import { name } from '../util/name.js'\nexport const pool = name\n",
      'src/cli/main.ts': "import { pool } from '../pool/pool.js'\nexport const main = pool\n",
    })
    expect(result.output).toContain('no dependency violations')
    expect(result.status).toBe(0)
  }, 120_000)

  test('an upward import (transport → providers), an import between edges and an over-long file fail', () => {
    const result = check({
      'src/providers/vm-provider.ts': 'export interface ExecOptions { cwd?: string }\n',
      'src/transport/ssh.ts': "import type { ExecOptions } from '../providers/vm-provider.js'\nexport const run = (options: ExecOptions) => options\n",
      'src/vitest/plugin.ts': 'export const plugin = 1\n',
      'src/cli/main.ts': "import { plugin } from '../vitest/plugin.js'\nexport const main = plugin\n",
      'src/pool/long.ts': `/** A file with no reason to be long. */\n${'export const x = 1\n'.repeat(360)}`,
    })
    expect(result.status).toBe(1)
    expect(result.output).toMatch(/no-upward-import-from-transport[\s\S]*src\/transport\/ssh\.ts → src\/providers\/vm-provider\.ts/)
    expect(result.output).toMatch(/src\/cli\/main\.ts → src\/vitest\/plugin\.ts/)
    expect(result.output).toContain('src/pool/long.ts: 362 lines (over 350)')
  }, 120_000)
})
