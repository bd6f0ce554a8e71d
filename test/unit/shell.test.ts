import { execFileSync } from 'node:child_process'
import { describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { buildShellScript, quoteShellArg, toShellLine } from '../../src/transport/shell.js'

const sh = (script: string) => execFileSync('sh', ['-c', script], { encoding: 'utf8', cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] })

describe('shell quoting', () => {
  const nasty = ["it's", '$(touch /tmp/vm-pool-pwned)', '`id`', 'a b', '', '"', '\\', '*', '\n', 'x;y|z&', '--flag', '$HOME', "''"]

  test.each(nasty)('quoteShellArg(%j) is one word that sh reads back verbatim', (word) => {
    expect(sh(`printf '%s' ${quoteShellArg(word)}`)).toBe(word)
  })

  test('safe words stay readable, unsafe ones are single-quoted', () => {
    expect(quoteShellArg('/usr/bin/env')).toBe('/usr/bin/env')
    expect(quoteShellArg('a b')).toBe("'a b'")
    expect(quoteShellArg("it's")).toBe(`'it'\\''s'`)
  })

  test('argv arrays become a shell line; strings pass through; empty argv is refused', () => {
    expect(sh(toShellLine(['printf', '%s|', ...nasty]))).toBe(nasty.map((w) => `${w}|`).join(''))
    expect(toShellLine('echo $HOME')).toBe('echo $HOME')
    expect(() => toShellLine([])).toThrow(/empty argv/)
  })

  test('buildShellScript changes directory and exports env before the command', () => {
    const script = buildShellScript(['sh', '-c', 'printf "%s:%s" "$PWD" "$GREETING"'], { cwd: '/tmp', env: { GREETING: "hi $(there) 'you'" } })
    expect(sh(script)).toBe("/tmp:hi $(there) 'you'")
  })

  test('a missing cwd stops the script before the command runs', () => {
    expect(() => sh(buildShellScript('echo ran', { cwd: '/no/such/dir' }))).toThrow()
  })

  test('bad env names are refused', () => {
    expect(() => buildShellScript('true', { env: { 'A;rm': 'x' } })).toThrow()
    try {
      buildShellScript('true', { env: { '1X': 'x' } })
    } catch (error) {
      expect(isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS')).toBe(true)
    }
  })
})
