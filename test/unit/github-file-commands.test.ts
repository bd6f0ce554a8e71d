import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, stat, writeFile, chmod } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterEach, beforeEach, describe, expect, test } from 'vitest'
import { quoteShellArg } from '../../src/transport/shell.js'
import {
  addToPath,
  FileCommandError,
  makeReadBackCommand,
  parseFileCommands,
  parseKeyValueFile,
  parsePathFile,
  splitReadBack,
} from '../../src/workflow/github/file-commands.js'
import { buildStepCommand } from '../../src/workflow/github/step-shell.js'

const run = promisify(execFile)

const errorOf = (fn: () => unknown): Error => {
  try {
    fn()
  } catch (error) {
    return error as Error
  }
  throw new Error('expected a throw')
}

describe('GitHub file commands: GITHUB_ENV / GITHUB_OUTPUT', () => {
  test.each<[string, string, Record<string, string>]>([
    ['one line', 'FOO=bar\n', { FOO: 'bar' }],
    ['no final newline', 'FOO=bar', { FOO: 'bar' }],
    ['value kept as written: spaces, =, <<, empty', 'A= x = y \nB=a<<b\nC=\n', { A: ' x = y ', B: 'a<<b', C: '' }],
    ['blank lines ignored', '\nA=1\n\n   \nB=2\n\n', { A: '1', B: '2' }],
    ['later lines win', 'A=1\nA=2\n', { A: '2' }],
    ['multi-line value', 'TEXT<<EOF\nline 1\n\nline 3\nEOF\nAFTER=x\n', { TEXT: 'line 1\n\nline 3', AFTER: 'x' }],
    ['multi-line: empty value', 'E<<END\nEND\n', { E: '' }],
    ['multi-line: a delimiter with = in it; a line that only contains the delimiter does not end it', 'M<<ghadelimiter_1=2\n ghadelimiter_1=2\nx\nghadelimiter_1=2\n', { M: ' ghadelimiter_1=2\nx' }],
    ['CRLF line endings', 'A=1\r\nT<<EOF\r\nx\r\ny\r\nEOF\r\n', { A: '1', T: 'x\ny' }],
  ])('%s', (_, text, expected) => {
    expect(parseKeyValueFile(text, 'env')).toEqual(expected)
  })

  test('output names need not be environment variable names; env names must be', () => {
    expect(parseKeyValueFile('my-output=1\n', 'output')).toEqual({ 'my-output': '1' })
    expect(errorOf(() => parseKeyValueFile('A=1\nmy-var=1\n', 'env')).message).toBe(
      'GITHUB_ENV line 2: invalid environment variable name "my-var": use letters, digits and _, not starting with a digit',
    )
  })

  test.each<[string, string, 'env' | 'output', string]>([
    ['a line that is neither form', 'A=1\njust text\n', 'env', 'GITHUB_ENV line 2: "just text": expected NAME=value or NAME<<DELIMITER'],
    ['an empty name', '=value\n', 'output', 'GITHUB_OUTPUT line 1: "=value": the name is empty'],
    ['an empty heredoc name', '<<EOF\nx\nEOF\n', 'output', 'GITHUB_OUTPUT line 1: "<<EOF": the name is empty'],
    ['an empty delimiter', 'A<<\nx\n', 'env', 'GITHUB_ENV line 1: "A<<": the delimiter after << is empty'],
    ['an unterminated multi-line value', 'OK=1\nT<<EOF\nline\nEOF \n', 'output', 'GITHUB_OUTPUT line 2: "T<<EOF": no line "EOF" ends this multi-line value'],
  ])('malformed: %s', (_, text, file, message) => {
    const error = errorOf(() => parseKeyValueFile(text, file))
    expect(error).toBeInstanceOf(FileCommandError)
    expect(error.message).toBe(message)
  })
})

describe('GitHub file commands: GITHUB_PATH', () => {
  test('one directory a line, blank lines and CR ignored', () => {
    expect(parsePathFile('/opt/a/bin\r\n\n/opt/b bin\n')).toEqual(['/opt/a/bin', '/opt/b bin'])
  })

  test('the most recently added first, each directory once', () => {
    expect(addToPath([], ['/a', '/b'])).toEqual(['/b', '/a'])
    expect(addToPath(['/b', '/a'], ['/c', '/a'])).toEqual(['/a', '/c', '/b'])
    const current = ['/x']
    addToPath(current, ['/y'])
    expect(current).toEqual(['/x'])
  })
})

describe('GitHub file commands: reading back in the VM (real sh)', () => {
  let dir: string
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vm-pool-file-commands-'))
  })
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  const readBack = async (maxBytes?: number) => (await run('sh', ['-c', makeReadBackCommand(quoteShellArg(dir), maxBytes)], { encoding: 'utf8' })).stdout

  test('prints env, output, path and summary framed by NULs, then empties all four; a removed file counts as empty', async () => {
    await writeFile(join(dir, 'env'), 'FOO=bar\nT<<EOF\na\nb\nEOF\n')
    await writeFile(join(dir, 'output'), 'x=1\n')
    await writeFile(join(dir, 'summary'), '# summary\n')
    // `path` does not exist: a step removed it.
    const stdout = await readBack()
    expect(stdout).toBe('FOO=bar\nT<<EOF\na\nb\nEOF\n\0x=1\n\0\0# summary\n\0')
    expect(parseFileCommands(splitReadBack(stdout))).toEqual({ env: { FOO: 'bar', T: 'a\nb' }, output: { x: '1' }, path: [], summary: '# summary\n' })
    for (const file of ['env', 'output', 'path', 'summary']) expect((await stat(join(dir, file))).size, file).toBe(0)
    // Read again: nothing is applied twice.
    expect(parseFileCommands(splitReadBack(await readBack()))).toEqual({ env: {}, output: {}, path: [], summary: '' })
  })

  test('a file over the cap fails with its name; a NUL in a file is refused, not misread', async () => {
    await writeFile(join(dir, 'output'), `big=${'x'.repeat(100)}\n`)
    expect(errorOf(() => splitReadBack('', 50)).message).toMatch(/expected 4 files, got 0 parts/)
    const big = await readBack(50)
    expect(errorOf(() => splitReadBack(big, 50)).message).toBe('GITHUB_OUTPUT: the step wrote more than 50 bytes to it, the most vm-pool reads back')
    // A summary over the cap does not fail the step (GitHub would just not show it): its head is kept.
    await writeFile(join(dir, 'summary'), `# ${'y'.repeat(100)}\n`)
    expect(splitReadBack(await readBack(50), 50).summary).toBe(`# ${'y'.repeat(48)}\n… (the step wrote more than 50 bytes to GITHUB_STEP_SUMMARY: the rest is not read back)\n`)
    await writeFile(join(dir, 'env'), 'A=1\0B=2\n')
    const withNul = await readBack()
    const error = errorOf(() => splitReadBack(withNul))
    expect(error).toBeInstanceOf(FileCommandError)
    expect(error.message).toMatch(/does one hold a NUL byte/)
    expect(await readFile(join(dir, 'env'), 'utf8')).toBe('')
  })

  test('buildStepCommand puts GITHUB_PATH directories before the PATH, first first, for every shell', async () => {
    for (const name of ['one', 'two words']) {
      await mkdir(join(dir, name))
      await writeFile(join(dir, name, 'which-dir'), `#!/bin/sh\necho ${name.replace(' ', '-')}\n`)
      await chmod(join(dir, name, 'which-dir'), 0o755)
    }
    const prefix = [join(dir, 'two words'), join(dir, 'one')]
    for (const shell of [undefined, 'sh', 'sh -e {0}']) {
      const { stdout } = await run('sh', ['-c', buildStepCommand('which-dir; echo "$PATH"', shell, prefix)], { encoding: 'utf8' })
      const [first, path] = stdout.trim().split('\n')
      expect(first, String(shell)).toBe('two-words')
      expect(path).toBe(`${prefix.join(':')}:${process.env.PATH}`)
    }
    expect(buildStepCommand('true', 'sh', [])).toBe('exec sh -e -c true')
  })
})
