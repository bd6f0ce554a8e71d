import { describe, expect, test } from 'vitest'
import { evaluateExpression, type EvaluationScope } from '../../src/workflow/github/expression-evaluator.js'
import { ExpressionSyntaxError, parseExpression, type ExpressionValue } from '../../src/workflow/github/expression-parser.js'
import { checkTemplate, evaluateCondition, evaluateValue, findTemplateParts, substituteTemplate } from '../../src/workflow/github/expression-template.js'

const contexts: Record<string, ExpressionValue> = {
  github: { ref: 'refs/heads/main', event_name: 'push', event: { issue: { labels: [{ name: 'bug' }, { name: 'ui' }] } } },
  matrix: { os: 'debian', node: 20, experimental: true, conf: { cc: 'gcc' } },
  env: { GREETING: 'hello', EMPTY: '' },
  steps: { 'my-step': { outcome: 'failure', conclusion: 'success' } },
  needs: { build: { result: 'success' } },
}
const scope: EvaluationScope = { contexts }
const evaluate = (text: string, status?: EvaluationScope['status']) => evaluateExpression(parseExpression(text), { ...scope, ...(status ? { status } : {}) })

describe('GitHub expressions: evaluation', () => {
  test.each<[string, ExpressionValue]>([
    ['matrix.os', 'debian'],
    ['matrix.node', 20],
    ["matrix['os']", 'debian'],
    ['matrix.conf.cc', 'gcc'],
    ['matrix.missing', null],
    ['matrix.missing.deeper', null],
    ['steps.my-step.outcome', 'failure'],
    ['github.REF', 'refs/heads/main'],
    ['github.event.issue.labels.*.name', ['bug', 'ui']],
    ["github.ref == 'refs/heads/main'", true],
    ["github.ref == 'REFS/HEADS/MAIN'", true],
    ["matrix.node == '20'", true],
    ['matrix.node == 20.0', true],
    ['matrix.experimental == 1', true],
    ["null == ''", true],
    ["'abc' == 0", false],
    ["matrix.node != '20'", false],
    ['matrix.node > 18 && matrix.node <= 20', true],
    ["'b' > 'A'", true],
    ["env.EMPTY || 'fallback'", 'fallback'],
    ["env.GREETING && 'yes'", 'yes'],
    ['!env.EMPTY', true],
    ['!(matrix.node == 20)', false],
    ['0x10 == 16', true],
    ['-1 < 0', true],
    ['1e2', 100],
    ["'it''s'", "it's"],
    ["contains('Hello World', 'WORLD')", true],
    ["contains(github.event.issue.labels.*.name, 'bug')", true],
    ["contains(github.event.issue.labels.*.name, 'feature')", false],
    ["startsWith(github.ref, 'refs/heads/')", true],
    ["endsWith(github.ref, '/MAIN')", true],
    ["format('{0}-{1} {{literal}}', matrix.os, matrix.node)", 'debian-20 {literal}'],
    ["join(github.event.issue.labels.*.name, ', ')", 'bug, ui'],
    ["fromJSON('[1, 2]')[1]", 2],
    ["toJSON(matrix.conf)", '{\n  "cc": "gcc"\n}'],
    ["fromJSON('{\"a\": true}').a", true],
  ])('%s → %j', (text, expected) => {
    expect(evaluate(text)).toEqual(expected)
  })

  test('status functions answer from the status given; always() is always true', () => {
    expect(evaluate('success()', { success: false, failure: true, cancelled: false })).toBe(false)
    expect(evaluate('failure()', { success: false, failure: true, cancelled: false })).toBe(true)
    expect(evaluate('cancelled()', { success: false, failure: false, cancelled: true })).toBe(true)
    expect(evaluate('always()', { success: false, failure: false, cancelled: true })).toBe(true)
  })

  test('syntax errors say what and where', () => {
    const cases: Array<[string, RegExp, number]> = [
      ['matrix.', /expected a property name after "\."/, 7],
      ["'open", /unterminated string/, 0],
      ['"double"', /single quotes/, 0],
      ['a == ', /unexpected end/, 5],
      ['(a', /expected "\)" to close "\("/, 2],
      ['a b', /unexpected "b" after the expression/, 2],
      ['a = b', /unexpected character "="/, 2],
    ]
    for (const [text, message, offset] of cases) {
      let error: unknown
      try {
        parseExpression(text)
      } catch (caught) {
        error = caught
      }
      expect(error, text).toBeInstanceOf(ExpressionSyntaxError)
      expect((error as ExpressionSyntaxError).message, text).toMatch(message)
      expect((error as ExpressionSyntaxError).offset, text).toBe(offset)
    }
  })
})

describe('GitHub expressions: templates', () => {
  test('substitutes every ${{ }} as text (null as empty, objects as GitHub writes them)', () => {
    expect(substituteTemplate('node ${{ matrix.node }} on ${{matrix.os}}!', scope)).toBe('node 20 on debian!')
    expect(substituteTemplate('[${{ matrix.missing }}] ${{ matrix.conf }} ${{ matrix.experimental }}', scope)).toBe('[] Object true')
    expect(substituteTemplate("${{ format('}}{0}', 'x') }}", scope)).toBe('}x')
    expect(substituteTemplate('no expressions', scope)).toBe('no expressions')
  })

  test('a value that is exactly one expression keeps its type', () => {
    expect(evaluateValue('${{ matrix.experimental }}', scope)).toBe(true)
    expect(evaluateValue(' ${{ matrix.node }} ', scope)).toBe(20)
    expect(evaluateValue('v${{ matrix.node }}', scope)).toBe('v20')
  })

  test('finds parts and refuses an unclosed one', () => {
    expect(findTemplateParts('a ${{ x }} b ${{ y }}').map((part) => part.expression.trim())).toEqual(['x', 'y'])
    expect(() => findTemplateParts('a ${{ x')).toThrow(/without a closing/)
  })

  test('checkTemplate reports syntax, unknown contexts and functions, arity and hashFiles before anything runs', () => {
    expect(checkTemplate('echo ${{ matrix.os }} ${{ github.sha }}')).toEqual([])
    expect(checkTemplate('${{ matrix. }}')[0]).toMatch(/invalid expression "matrix\.": expected a property name/)
    expect(checkTemplate('${{ secret.TOKEN }}')[0]).toMatch(/unknown context "secret"/)
    expect(checkTemplate("${{ lower('A') }}")[0]).toMatch(/unknown function lower\(\)/)
    expect(checkTemplate("${{ contains('a') }}")[0]).toMatch(/contains\(\) takes 2 argument\(s\), got 1/)
    expect(checkTemplate("${{ hashFiles('**/package-lock.json') }}")[0]).toMatch(/hashFiles\(\) is not supported/)
    expect(checkTemplate('matrix.os ==', true)[0]).toMatch(/unexpected end/)
    expect(checkTemplate('matrix.os == 1', false)).toEqual([])
  })
})

describe('if: conditions', () => {
  const ok = { success: true, failure: false, cancelled: false }
  const failed = { success: false, failure: true, cancelled: false }
  const cancelled = { success: false, failure: false, cancelled: true }
  test.each<[string | boolean | undefined, typeof ok, boolean]>([
    [undefined, ok, true],
    [undefined, failed, false],
    ['always()', failed, true],
    ['${{ always() }}', cancelled, true],
    ['failure()', failed, true],
    ['failure()', ok, false],
    ['success()', failed, false],
    ['cancelled()', cancelled, true],
    ['!cancelled()', failed, true],
    // Without a status function, success() && (…) is implied.
    ["matrix.os == 'debian'", ok, true],
    ["matrix.os == 'debian'", failed, false],
    ["${{ matrix.os == 'alpine' }}", ok, false],
    ["failure() && matrix.os == 'debian'", failed, true],
    ["always() && matrix.os == 'alpine'", failed, false],
    [true, ok, true],
    [true, failed, false],
    [false, ok, false],
    // Text around ${{ }} makes a non-empty string: true, as on GitHub.
    ['${{ false }} text', ok, true],
  ])('if: %j with %j → %s', (condition, status, expected) => {
    expect(evaluateCondition(condition, { contexts, status })).toBe(expected)
  })
})
