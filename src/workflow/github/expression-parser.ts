/**
 * The GitHub Actions expression language (the text inside `${{ }}` and `if:`), parsed to a small AST.
 * Grammar, lowest precedence first: `||`, `&&`, `== !=`, `< <= > >=`, unary `!`, then member access
 * (`a.b`, `a['b']`, `a[0]`, the `a.*` filter) and calls `f(x, y)` on literals, names and `( )`.
 * There is no arithmetic: `-` is part of names (`steps.my-step.outcome`) and of number literals.
 */

export type ExpressionValue = null | boolean | number | string | ExpressionValue[] | { [key: string]: ExpressionValue }

export type BinaryOperator = '||' | '&&' | '==' | '!=' | '<' | '<=' | '>' | '>='

export type ExpressionNode =
  | { kind: 'literal'; value: ExpressionValue }
  | { kind: 'context'; name: string; offset: number }
  | { kind: 'member'; object: ExpressionNode; property: string }
  | { kind: 'index'; object: ExpressionNode; index: ExpressionNode }
  | { kind: 'filter'; object: ExpressionNode }
  | { kind: 'call'; name: string; args: ExpressionNode[]; offset: number }
  | { kind: 'not'; operand: ExpressionNode }
  | { kind: 'binary'; operator: BinaryOperator; left: ExpressionNode; right: ExpressionNode }

/** A syntax error; `offset` is the character in the expression where it was noticed. */
export class ExpressionSyntaxError extends Error {
  override name = 'ExpressionSyntaxError'
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(message)
  }
}

type Token =
  | { type: 'number'; value: number; offset: number }
  | { type: 'string'; value: string; offset: number }
  | { type: 'name'; value: string; offset: number }
  | { type: 'punct'; value: string; offset: number }
  | { type: 'end'; offset: number }

const NAME = /[A-Za-z_][A-Za-z0-9_-]*/y
const NUMBER = /-?(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)/y
const PUNCTUATION = ['==', '!=', '<=', '>=', '&&', '||', '<', '>', '!', '(', ')', '[', ']', '.', ',', '*']

function tokenize(text: string): Token[] {
  const tokens: Token[] = []
  let i = 0
  while (i < text.length) {
    const char = text[i]!
    if (/\s/.test(char)) {
      i++
      continue
    }
    if (char === "'") {
      // A quote inside a string is written twice: 'it''s'.
      let value = ''
      let j = i + 1
      for (;;) {
        if (j >= text.length) throw new ExpressionSyntaxError('unterminated string (strings use single quotes)', i)
        if (text[j] === "'") {
          if (text[j + 1] === "'") {
            value += "'"
            j += 2
            continue
          }
          break
        }
        value += text[j]
        j++
      }
      tokens.push({ type: 'string', value, offset: i })
      i = j + 1
      continue
    }
    if (char === '"') throw new ExpressionSyntaxError(`strings use single quotes, not double quotes`, i)
    NUMBER.lastIndex = i
    const number = /[-\d.]/.test(char) ? NUMBER.exec(text) : null
    // `.` alone is member access (`a.b`), and a name may follow a number only after an operator.
    if (number && !(char === '.' && tokens.at(-1)?.type !== 'punct')) {
      tokens.push({ type: 'number', value: Number(number[0]), offset: i })
      i += number[0].length
      continue
    }
    NAME.lastIndex = i
    const name = NAME.exec(text)
    if (name) {
      tokens.push({ type: 'name', value: name[0], offset: i })
      i += name[0].length
      continue
    }
    const punct = PUNCTUATION.find((p) => text.startsWith(p, i))
    if (!punct) throw new ExpressionSyntaxError(`unexpected character ${JSON.stringify(char)}`, i)
    tokens.push({ type: 'punct', value: punct, offset: i })
    i += punct.length
  }
  tokens.push({ type: 'end', offset: text.length })
  return tokens
}

const LEVELS: BinaryOperator[][] = [['||'], ['&&'], ['==', '!='], ['<', '<=', '>', '>=']]

/** Parse one expression (without the `${{ }}`); throws `ExpressionSyntaxError`. */
export function parseExpression(text: string): ExpressionNode {
  const tokens = tokenize(text)
  let position = 0
  const peek = () => tokens[position]!
  const isPunct = (value: string) => {
    const token = peek()
    return token.type === 'punct' && token.value === value
  }
  const expect = (value: string, what: string) => {
    if (!isPunct(value)) throw new ExpressionSyntaxError(`expected ${JSON.stringify(value)} ${what}, found ${describe(peek())}`, peek().offset)
    position++
  }

  const binary = (level: number): ExpressionNode => {
    if (level === LEVELS.length) return unary()
    let left = binary(level + 1)
    for (;;) {
      const token = peek()
      const operator = LEVELS[level]!.find((op) => token.type === 'punct' && token.value === op)
      if (!operator) return left
      position++
      left = { kind: 'binary', operator, left, right: binary(level + 1) }
    }
  }

  const unary = (): ExpressionNode => {
    if (isPunct('!')) {
      position++
      return { kind: 'not', operand: unary() }
    }
    return postfix(primary())
  }

  const postfix = (node: ExpressionNode): ExpressionNode => {
    for (;;) {
      if (isPunct('.')) {
        position++
        const token = peek()
        if (token.type === 'punct' && token.value === '*') {
          position++
          node = { kind: 'filter', object: node }
        } else if (token.type === 'name') {
          position++
          node = { kind: 'member', object: node, property: token.value }
        } else {
          throw new ExpressionSyntaxError(`expected a property name after ".", found ${describe(token)}`, token.offset)
        }
      } else if (isPunct('[')) {
        position++
        if (isPunct('*')) {
          position++
          node = { kind: 'filter', object: node }
        } else {
          node = { kind: 'index', object: node, index: binary(0) }
        }
        expect(']', 'to close "["')
      } else {
        return node
      }
    }
  }

  const primary = (): ExpressionNode => {
    const token = peek()
    position++
    switch (token.type) {
      case 'number':
        return { kind: 'literal', value: token.value }
      case 'string':
        return { kind: 'literal', value: token.value }
      case 'name': {
        if (isPunct('(')) {
          position++
          const args: ExpressionNode[] = []
          if (!isPunct(')')) {
            args.push(binary(0))
            while (isPunct(',')) {
              position++
              args.push(binary(0))
            }
          }
          expect(')', `to close the call of ${token.value}(`)
          return { kind: 'call', name: token.value, args, offset: token.offset }
        }
        if (token.value === 'true' || token.value === 'false') return { kind: 'literal', value: token.value === 'true' }
        if (token.value === 'null') return { kind: 'literal', value: null }
        return { kind: 'context', name: token.value, offset: token.offset }
      }
      case 'punct':
        if (token.value === '(') {
          const inner = binary(0)
          expect(')', 'to close "("')
          return inner
        }
        throw new ExpressionSyntaxError(`unexpected ${describe(token)}`, token.offset)
      case 'end':
        throw new ExpressionSyntaxError('unexpected end of the expression', token.offset)
    }
  }

  const node = binary(0)
  if (peek().type !== 'end') throw new ExpressionSyntaxError(`unexpected ${describe(peek())} after the expression`, peek().offset)
  return node
}

function describe(token: Token): string {
  switch (token.type) {
    case 'end':
      return 'the end of the expression'
    case 'string':
      return `the string '${token.value}'`
    default:
      return `"${token.value}"`
  }
}

/** Every node of a tree, depth first (for static checks: which contexts and functions it uses). */
export function* walkExpression(node: ExpressionNode): Generator<ExpressionNode> {
  yield node
  switch (node.kind) {
    case 'member':
    case 'filter':
      yield* walkExpression(node.object)
      break
    case 'index':
      yield* walkExpression(node.object)
      yield* walkExpression(node.index)
      break
    case 'call':
      for (const arg of node.args) yield* walkExpression(arg)
      break
    case 'not':
      yield* walkExpression(node.operand)
      break
    case 'binary':
      yield* walkExpression(node.left)
      yield* walkExpression(node.right)
      break
    default:
      break
  }
}
