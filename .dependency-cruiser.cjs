/**
 * The layer rule of docs/architecture.md, checked by `npm run check:layers` (part of `npm test`):
 * data flows top to bottom and a layer imports only the layers below it.
 *
 *   vitest/, cli/, protocol/     edges (never import each other)
 *   workflow/
 *   pool/
 *   providers/
 *   transport/
 *   config/
 *   util/
 *   errors.ts
 */
const LAYERS = ['errors', 'util', 'config', 'transport', 'providers', 'pool', 'workflow', 'edge']
const FOLDERS = {
  errors: '^src/errors\\.ts$',
  util: '^src/util/',
  config: '^src/config/',
  transport: '^src/transport/',
  providers: '^src/providers/',
  pool: '^src/pool/',
  workflow: '^src/workflow/',
  edge: '^src/(cli|vitest|protocol)/',
}
const EDGES = ['cli', 'vitest', 'protocol']

const upward = LAYERS.slice(0, -1).map((layer, index) => ({
  name: `no-upward-import-from-${layer}`,
  comment: `${layer} may import only the layers below it (docs/architecture.md)`,
  severity: 'error',
  from: { path: FOLDERS[layer] },
  to: { path: LAYERS.slice(index + 1).map((above) => FOLDERS[above]) },
}))

const betweenEdges = EDGES.map((edge) => ({
  name: `no-import-between-edges-from-${edge}`,
  comment: 'the edges (cli, vitest, protocol) sit side by side on the pool; none imports another',
  severity: 'error',
  from: { path: `^src/${edge}/` },
  to: { path: `^src/(${EDGES.filter((other) => other !== edge).join('|')})/` },
}))

module.exports = {
  forbidden: [
    ...upward,
    ...betweenEdges,
    {
      name: 'no-import-of-dist-or-tests-from-src',
      comment: 'the product never reaches into its own build output or the test tree',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^(dist|test|fixtures|bench)/' },
    },
    {
      name: 'no-circular',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true, viaOnly: { dependencyTypesNot: ['type-only'] } },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    // TypeScript 7 has no compiler API for dependency-cruiser yet: swc parses the sources instead.
    parser: 'swc',
    tsConfig: { fileName: 'tsconfig.build.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'default', 'types'] },
  },
}
