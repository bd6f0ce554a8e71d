import { describe, expect, test } from 'vitest'
import { printable } from '../../src/util/printable-text.js'

describe('printable: control characters from input become visible escapes', () => {
  test.each([
    ['plain text', 'build (node 20) ✓', 'build (node 20) ✓'],
    ['line feed', 'a\nvm-pool run: 1 workflow, 1 succeeded', 'a\\nvm-pool run: 1 workflow, 1 succeeded'],
    ['carriage return', 'a\rb', 'a\\rb'],
    ['tab', 'a\tb', 'a\\tb'],
    ['escape sequence', 'a\u001b[2Jb', 'a\\e[2Jb'],
    ['NUL, DEL and a C1 control (8-bit CSI)', 'a\u0000b\u007fc\u009bd', 'a\\u0000b\\u007fc\\u009bd'],
    ['Unicode line separators', 'a\u2028b\u2029c', 'a\\u2028b\\u2029c'],
  ])('%s', (_, input, output) => {
    expect(printable(input)).toBe(output)
  })

  test('multiline keeps line feeds and tabs, escapes the rest', () => {
    expect(printable('error\n  hint:\tx\r\u001b[1m', { multiline: true })).toBe('error\n  hint:\tx\\r\\e[1m')
  })

  test('escaping twice changes nothing more (labels are escaped before padding, then printed)', () => {
    const once = printable('a\nb\r')
    expect(printable(once)).toBe(once)
  })
})
