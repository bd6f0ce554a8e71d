import { describe, expect, test } from 'vitest'
import { checkJobGraph, getAncestors, getJobStatus, getReadyJobs, type JobResultValue } from '../../src/workflow/github/job-graph.js'
import { evaluateJobOutputs, mergeJobOutputs } from '../../src/workflow/github/job-outputs.js'
import type { GithubJob } from '../../src/workflow/github/github-workflow-schema.js'
import { cellLabel, expandMatrix, filterMatrixCells, type MatrixInput } from '../../src/workflow/github/matrix.js'

describe('matrix expansion', () => {
  test('the cross product, first key outermost', () => {
    expect(expandMatrix({ dimensions: { os: ['a', 'b'], node: [20, 22] }, include: [], exclude: [] })).toEqual([
      { os: 'a', node: 20 },
      { os: 'a', node: 22 },
      { os: 'b', node: 20 },
      { os: 'b', node: 22 },
    ])
  })

  test('no matrix: one cell with no values', () => {
    expect(expandMatrix(undefined)).toEqual([{}])
  })

  test('exclude removes every combination an entry matches, partially or fully', () => {
    const matrix: MatrixInput = { dimensions: { os: ['a', 'b'], node: [20, 22], arch: ['x64', 'arm'] }, include: [], exclude: [{ os: 'a', node: 22 }, { arch: 'arm', os: 'b', node: 20 }] }
    expect(expandMatrix(matrix)).toEqual([
      { os: 'a', node: 20, arch: 'x64' },
      { os: 'a', node: 20, arch: 'arm' },
      { os: 'b', node: 20, arch: 'x64' },
      { os: 'b', node: 22, arch: 'x64' },
      { os: 'b', node: 22, arch: 'arm' },
    ])
  })

  test("include: GitHub's documented example (added values may be overwritten, original ones may not)", () => {
    const matrix: MatrixInput = {
      dimensions: { fruit: ['apple', 'pear'], animal: ['cat', 'dog'] },
      include: [{ color: 'green' }, { color: 'pink', animal: 'cat' }, { fruit: 'apple', shape: 'circle' }, { fruit: 'banana' }, { fruit: 'banana', animal: 'cat' }],
      exclude: [],
    }
    expect(expandMatrix(matrix)).toEqual([
      { fruit: 'apple', animal: 'cat', color: 'pink', shape: 'circle' },
      { fruit: 'apple', animal: 'dog', color: 'green', shape: 'circle' },
      { fruit: 'pear', animal: 'cat', color: 'pink' },
      { fruit: 'pear', animal: 'dog', color: 'green' },
      { fruit: 'banana' },
      { fruit: 'banana', animal: 'cat' },
    ])
  })

  test('exclude applies before include; include alone makes the cells; object values compare deeply', () => {
    expect(expandMatrix({ dimensions: { os: ['a', 'b'] }, include: [{ os: 'b', extra: 1 }], exclude: [{ os: 'b' }] })).toEqual([{ os: 'a' }, { os: 'b', extra: 1 }])
    expect(expandMatrix({ dimensions: {}, include: [{ os: 'x' }, { os: 'y' }], exclude: [] })).toEqual([{ os: 'x' }, { os: 'y' }])
    expect(expandMatrix({ dimensions: { conf: [{ cc: 'gcc' }, { cc: 'clang' }] }, include: [], exclude: [{ conf: { cc: 'gcc' } }] })).toEqual([{ conf: { cc: 'clang' } }])
  })

  test('everything excluded leaves no cell', () => {
    expect(expandMatrix({ dimensions: { os: ['a'] }, include: [], exclude: [{ os: 'a' }] })).toEqual([])
  })

  test('labels and --matrix filters', () => {
    expect(cellLabel('build', { os: 'debian', node: 20 })).toBe('build (debian, 20)')
    expect(cellLabel('build', {})).toBe('build')
    const cells = expandMatrix({ dimensions: { os: ['a', 'b'], node: [20, 22] }, include: [], exclude: [] })
    expect(filterMatrixCells(cells, { node: '22' })).toEqual([
      { os: 'a', node: 22 },
      { os: 'b', node: 22 },
    ])
    expect(filterMatrixCells(cells, { node: '22', os: 'b' })).toEqual([{ os: 'b', node: 22 }])
    // A key none of the cells has does not apply to this job.
    expect(filterMatrixCells(cells, { python: '3.12' })).toHaveLength(4)
    expect(filterMatrixCells([{}], { node: '22' })).toEqual([{}])
  })
})

describe('needs: the job graph', () => {
  const jobs = [
    { id: 'build', needs: [] },
    { id: 'test', needs: ['build'] },
    { id: 'report', needs: ['test'] },
    { id: 'lint', needs: [] },
    { id: 'deploy', needs: ['test', 'lint'] },
  ]

  test('unknown jobs, self-needs and cycles are named', () => {
    expect(checkJobGraph(jobs)).toEqual([])
    expect(checkJobGraph([{ id: 'a', needs: ['nope'] }])).toEqual([['a', 'job "a" needs "nope", which is not a job of this workflow (jobs: a)']])
    expect(checkJobGraph([{ id: 'a', needs: ['a'] }])).toEqual([['a', 'job "a" needs itself']])
    expect(checkJobGraph([{ id: 'a', needs: ['c'] }, { id: 'b', needs: ['a'] }, { id: 'c', needs: ['b'] }])).toEqual([['a', 'the needs of these jobs form a cycle: a → c → b → a']])
  })

  test('ancestors are transitive', () => {
    expect([...getAncestors(jobs, 'deploy')].sort()).toEqual(['build', 'lint', 'test'])
    expect([...getAncestors(jobs, 'build')]).toEqual([])
  })

  test('ready jobs: needs finished (or not selected), not started', () => {
    const all = new Set(jobs.map((job) => job.id))
    const results = new Map<string, JobResultValue>()
    expect(getReadyJobs(jobs, all, results, new Set())).toEqual(['build', 'lint'])
    results.set('build', 'success')
    expect(getReadyJobs(jobs, all, results, new Set(['build', 'lint']))).toEqual(['test'])
    // --job deploy alone: its needs are not selected, so it is ready at once.
    expect(getReadyJobs(jobs, new Set(['deploy']), new Map(), new Set())).toEqual(['deploy'])
  })

  test('success() and failure() of a job look at every ancestor', () => {
    const results = new Map<string, JobResultValue>([
      ['build', 'failure'],
      ['test', 'skipped'],
    ])
    // report needs test (skipped) which needs build (failed): failure() is true two levels down.
    expect(getJobStatus(jobs, 'report', results, false)).toEqual({ success: false, failure: true, cancelled: false })
    expect(getJobStatus(jobs, 'lint', results, false)).toEqual({ success: true, failure: false, cancelled: false })
    expect(getJobStatus(jobs, 'test', new Map([['build', 'success']]), false)).toEqual({ success: true, failure: false, cancelled: false })
    expect(getJobStatus(jobs, 'test', new Map([['build', 'success']]), true)).toEqual({ success: false, failure: false, cancelled: true })
    // Ancestors not run (not selected) count as succeeded.
    expect(getJobStatus(jobs, 'deploy', new Map(), false).success).toBe(true)
  })
})

describe('job outputs', () => {
  const job = { id: 'build', where: 'o.yml:3:3', outputs: { version: '${{ steps.v.outputs.version }}', os: 'built on ${{ matrix.os }}', none: '${{ steps.missing.outputs.x }}' } } as unknown as GithubJob

  test("each cell substitutes them with its own contexts; a step's missing output is empty", () => {
    expect(evaluateJobOutputs(job, { contexts: { steps: { v: { outputs: { version: '1.2' } } }, matrix: { os: 'debian' } } })).toEqual({ version: '1.2', os: 'built on debian', none: '' })
    const failing = { ...job, outputs: { bad: '${{ fromJSON(steps.v.outputs.version) }}' } } as GithubJob
    expect(() => evaluateJobOutputs(failing, { contexts: { steps: { v: { outputs: { version: '{' } } } } })).toThrow(/^o\.yml:3:3: outputs\.bad: /)
  })

  test('the last cell to finish wins for a name, but an empty value does not overwrite a set one', () => {
    expect(mergeJobOutputs([])).toEqual({})
    expect(mergeJobOutputs([{ a: '1', b: '' }, { a: '2', b: '' }])).toEqual({ a: '2', b: '' })
    expect(mergeJobOutputs([{ a: '1', linux: 'yes' }, { a: '2', linux: '' }, { a: '', mac: 'yes' }])).toEqual({ a: '2', linux: 'yes', mac: 'yes' })
  })
})
