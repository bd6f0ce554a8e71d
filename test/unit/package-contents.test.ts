import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, normalize, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { expect, test } from 'vitest'

/**
 * What an npm user gets: `npm pack --dry-run` lists the tarball. The docs ship (every hint that names
 * node_modules/vm-pool/docs/<page> leads to a file), source maps point at shipped sources, and the
 * README's first screen is for users. Needs dist/ (test/setup/build-dist.ts builds it).
 */
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..')

function packedFiles(): Set<string> {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: REPO, encoding: 'utf8' })
  const [pack] = JSON.parse(out) as { files: { path: string }[] }[]
  return new Set(pack!.files.map((file) => file.path))
}

test('the tarball ships the docs, the sources the maps point at, and every page a hint names', { timeout: 60_000 }, () => {
  const files = packedFiles()
  for (const page of readdirSync(join(REPO, 'docs')).filter((name) => name.endsWith('.md'))) expect(files).toContain(`docs/${page}`)
  expect(files).toContain('README.md')
  expect(files).toContain('dist/index.js')
  expect(files).toContain('dist/vitest/index.d.ts')

  // Every source map (JS and declarations) resolves to a file in the tarball.
  const maps = [...files].filter((path) => path.endsWith('.map'))
  expect(maps.length).toBeGreaterThan(10)
  for (const map of maps) {
    const { sources } = JSON.parse(readFileSync(join(REPO, map), 'utf8')) as { sources: string[] }
    for (const source of sources) expect(files, `${map} → ${source}`).toContain(normalize(join(dirname(map), source)))
  }

  // Hints name docs through docPath('<page>') (src/util/docs-path.ts): each page is shipped.
  const pages = new Set<string>()
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) walk(join(dir, entry.name))
      else for (const match of readFileSync(join(dir, entry.name), 'utf8').matchAll(/docPath\('([^'#]+)/g)) pages.add(match[1]!)
    }
  }
  walk(join(REPO, 'src'))
  expect(pages.size).toBeGreaterThan(0)
  for (const page of pages) expect(files).toContain(`docs/${page}`)
  // ...and no user-facing string still says "see docs/x.md" (a path that exists only in this repository).
  const dist = [...files].filter((path) => path.startsWith('dist/') && path.endsWith('.js'))
  for (const file of dist) {
    const code = readFileSync(join(REPO, file), 'utf8').split('\n').filter((line) => !/^\s*(\/\/|\/\*|\*)/.test(line))
    expect(code.join('\n'), file).not.toMatch(/['"`][^'"`\n]*see docs\/[a-z-]+\.md/)
  }

  // README links to docs/ resolve in the package too.
  const readme = readFileSync(join(REPO, 'README.md'), 'utf8')
  for (const match of readme.matchAll(/\]\((docs\/[a-z-]+\.md)/g)) expect(files).toContain(match[1])
})

test("the README's first screen is for users; the fresh-machine commands stay, lower down", () => {
  const readme = readFileSync(join(REPO, 'README.md'), 'utf8')
  const firstScreen = readme.split('\n').slice(0, 40).join('\n')
  expect(firstScreen).toContain('npm i -D vm-pool')
  expect(firstScreen).toContain("import { vmPool } from 'vm-pool/vitest'")
  expect(firstScreen).toContain("import { test, expect, freshVm } from 'vm-pool/vitest'")
  expect(firstScreen).not.toContain('./scripts/example.sh')
  // Up to the repository's own section, a user of the package is never sent to a script only a clone has.
  const forUsers = readme.split('## On a fresh machine (this repository)')[0]!
  expect(forUsers.length).toBeLessThan(readme.length)
  expect(forUsers.replaceAll('in a clone of this repository `./scripts/example.sh`', '')).not.toContain('./scripts/')
  expect(readme).toContain('./scripts/example.sh   # installs what is missing')
  expect(readme).toMatch(/^npm test {15}# the project's own suite$/m)
})

test("the copy-paste examples a user may run with the fake provider touch nothing outside the VM user's home", () => {
  // The fake provider runs commands on the host (README, "Providers"): an example with `rm -rf /tmp/*`,
  // run as printed with `provider: 'fake'`, emptied the host's /tmp.
  for (const page of ['README.md', 'docs/vitest.md']) {
    const text = readFileSync(join(REPO, page), 'utf8')
    const blocks = [...text.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1]!)
    expect(blocks.length, page).toBeGreaterThan(0)
    for (const block of blocks) expect(block, page).not.toMatch(/exec\([^)]*rm -[a-z]*\s+\//)
  }
})

test('every package the shipped declarations import has its types installed with vm-pool (a user without skipLibCheck)', { timeout: 60_000 }, () => {
  // dist/transport/*.d.ts import 'ssh2', which ships no types: with @types/ssh2 only a devDependency,
  // `tsc` in a user's project failed with TS7016 (and with skipLibCheck the ssh types were `any`).
  const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { dependencies: Record<string, string>; peerDependencies: Record<string, string> }
  const installed = { ...pkg.dependencies, ...pkg.peerDependencies }
  // The declarations a user's tsc reads: the entry points' and everything they import, relatively.
  const imported = new Set<string>()
  const seen = new Set<string>()
  const visit = (file: string): void => {
    if (seen.has(file)) return
    seen.add(file)
    for (const match of readFileSync(join(REPO, file), 'utf8').matchAll(/(?:from|import) '([^']+)'/g)) {
      const specifier = match[1]!
      if (specifier.startsWith('.')) visit(normalize(join(dirname(file), specifier.replace(/\.js$/, '.d.ts'))))
      else if (!specifier.startsWith('node:')) imported.add(specifier.startsWith('@') ? specifier.split('/').slice(0, 2).join('/') : specifier.split('/')[0]!)
    }
  }
  visit('dist/index.d.ts')
  visit('dist/vitest/index.d.ts')
  expect(seen.size).toBeGreaterThan(20)
  expect(imported).toContain('ssh2')
  for (const name of imported) {
    expect(installed, name).toHaveProperty([name])
    const manifest = JSON.parse(readFileSync(join(REPO, 'node_modules', name, 'package.json'), 'utf8')) as Record<string, unknown>
    const shipsTypes = 'types' in manifest || 'typings' in manifest || JSON.stringify(manifest.exports ?? {}).includes('types')
    if (!shipsTypes) expect(installed, `${name} ships no types: @types/${name} must be a dependency`).toHaveProperty([`@types/${name}`])
  }
})

test('every package the shipped code imports is a dependency (or the peer vitest)', { timeout: 60_000 }, () => {
  // execa was a devDependency while dist/workflow/github/repo-source.js imports it: `vm-pool serve` in a
  // user's project died with ERR_MODULE_NOT_FOUND and a stack trace.
  const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { dependencies: Record<string, string>; peerDependencies: Record<string, string> }
  const installed = { ...pkg.dependencies, ...pkg.peerDependencies }
  const imported = new Set<string>()
  for (const file of packedFiles()) {
    if (!file.startsWith('dist/') || !file.endsWith('.js')) continue
    for (const match of readFileSync(join(REPO, file), 'utf8').matchAll(/(?:from|import\()\s*['"]([^'"./][^'"]*)['"]/g)) {
      const specifier = match[1]!
      if (!specifier.startsWith('node:')) imported.add(specifier.startsWith('@') ? specifier.split('/').slice(0, 2).join('/') : specifier.split('/')[0]!)
    }
  }
  expect(imported).toContain('zod')
  for (const name of imported) expect(installed, name).toHaveProperty([name])
})
