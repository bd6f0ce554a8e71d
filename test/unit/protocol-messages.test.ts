/**
 * The protocol's edge (src/protocol/protocol-messages.ts, inflight-requests.ts) without a helper process:
 * which lines are requests, with which defaults, what a bad one says; each request answered exactly once.
 */
import { describe, expect, test } from 'vitest'
import { VmPoolError } from '../../src/errors.js'
import { InflightRequests } from '../../src/protocol/inflight-requests.js'
import { BadRequest, OPERATIONS, parseRequest, type ResponseMessage } from '../../src/protocol/protocol-messages.js'

const badRequest = (line: string) => {
  try {
    parseRequest(line)
  } catch (error) {
    expect(error).toBeInstanceOf(BadRequest)
    return { id: (error as BadRequest).id, code: (error as BadRequest).error.code, message: (error as BadRequest).error.shortMessage }
  }
  throw new Error(`parsed: ${line}`)
}

describe('parseRequest', () => {
  test.for([
    { line: '{"id":1,"op":"hello","protocol":1}', params: { protocol: 1, pool: {}, check: false } },
    { line: '{"id":"a","op":"acquire"}', params: { key: 'worker' } },
    { line: '{"id":2,"op":"acquire","key":"gw0","name":"pytest-worker-1-1700000000"}', params: { key: 'gw0', name: 'pytest-worker-1-1700000000' } },
    { line: '{"id":3,"op":"fresh","spec":{"cpus":2}}', params: { spec: { cpus: 2 } } },
    { line: '{"id":4,"op":"exec","vm":"v","command":["ls","-l"]}', params: { vm: 'v', command: ['ls', '-l'], stream: false, cancellable: false } },
    { line: '{"id":5,"op":"putFile","vm":"v","path":"p","data":"AAEC"}', params: { vm: 'v', path: 'p', data: 'AAEC' } },
    { line: '{"id":6,"op":"release","vm":"v"}', params: { vm: 'v', discard: false, keep: false } },
    { line: '{"id":7,"op":"drain"}', params: { discard: false } },
    { line: '{"id":8,"op":"cancel","target":"a"}', params: { target: 'a' } },
  ])('$line', ({ line, params }) => {
    const request = parseRequest(line)
    expect(request.params).toEqual(params)
    expect(OPERATIONS).toContain(request.op)
  })

  test.for([
    { line: 'not json', id: null, message: 'a request line is not JSON' },
    { line: '{"op":"acquire"}', id: null, message: 'invalid request: id: expected a number or a string' },
    { line: '{"id":{"x":1},"op":"acquire"}', id: null, message: 'invalid request: id: expected a number or a string' },
    { line: '{"id":1}', id: 1, message: 'invalid request: op: Invalid input: expected string, received undefined' },
    { line: '{"id":1,"op":"toString"}', id: 1, message: 'unknown op "toString"' },
    { line: '{"id":1,"op":"exec","vm":"v","command":""}', id: 1, message: 'invalid exec request: command: Too small: expected string to have >=1 characters, got ""' },
    { line: '{"id":1,"op":"exec","vm":"v","command":"x","input":"a","inputBase64":"YQ=="}', id: 1, message: 'invalid exec request: give input or inputBase64, not both' },
    { line: '{"id":1,"op":"putFile","vm":"v","path":"p","data":"not base64!"}', id: 1, message: 'invalid putFile request: data: expected base64 data, got "not base64!"' },
    { line: '{"id":1,"op":"forwardPort","vm":"v","guestPort":70000}', id: 1, message: 'invalid forwardPort request: guestPort: Too big: expected number to be <=65535, got 70000' },
    { line: '{"id":1,"op":"acquire","colour":"red"}', id: 1, message: 'invalid acquire request: Unrecognized key: "colour"' },
  ])('refused: $line', ({ line, id, message }) => {
    expect(badRequest(line)).toEqual({ id, code: 'VMPOOL_INVALID_OPTIONS', message })
  })

  test("a big request's data is never quoted back", () => {
    const data = `${'A'.repeat(4000)}!`
    const { message } = badRequest(JSON.stringify({ id: 1, op: 'putFile', vm: 'v', path: 'p', data }))
    expect(message).toBe('invalid putFile request: data: expected base64 data')
  })
})

describe('InflightRequests', () => {
  const make = () => {
    const answers: ResponseMessage[] = []
    return { answers, inflight: new InflightRequests((message) => answers.push(message)) }
  }
  const stopped = new VmPoolError({ code: 'VMPOOL_EXEC_ABORTED', message: 'stopped' })

  test('answers each request once, with its result or its error', async () => {
    const { answers, inflight } = make()
    inflight.start(1, false, async () => ({ exitCode: 0 }))
    inflight.start(2, false, async () => Promise.reject(new Error('boom')))
    inflight.start(3, false, async () => undefined)
    await inflight.settled()
    // In the order the work finished.
    expect(answers.sort((a, b) => Number(a.id) - Number(b.id))).toEqual([
      { id: 1, ok: true, result: { exitCode: 0 } },
      { id: 2, ok: false, error: expect.objectContaining({ code: 'VMPOOL_INTERNAL', message: 'boom' }) },
      { id: 3, ok: true, result: {} },
    ])
    expect(inflight.has(1)).toBe(false)
  })

  test('a cancellable request gets the signal, is aborted and answers when its work ends', async () => {
    const { answers, inflight } = make()
    let seen: AbortSignal | undefined
    inflight.start(1, true, (signal) => {
      seen = signal
      return new Promise((_, reject) => signal!.addEventListener('abort', () => reject(signal!.reason)))
    })
    expect(seen).toBeInstanceOf(AbortSignal)
    expect(inflight.cancel(1, stopped)).toEqual({ cancelled: true, killed: true })
    expect(answers).toEqual([])
    await inflight.settled()
    expect(answers).toEqual([{ id: 1, ok: false, error: expect.objectContaining({ code: 'VMPOOL_EXEC_ABORTED', message: 'stopped' }) }])
  })

  test('any other request is answered at once when stopped, its late result dropped, and nobody waits for it', async () => {
    const { answers, inflight } = make()
    let finish: (value: unknown) => void = () => {}
    let seen: AbortSignal | undefined = new AbortController().signal
    inflight.start(1, false, (signal) => {
      seen = signal
      return new Promise((resolve) => (finish = resolve))
    })
    inflight.start(2, false, () => new Promise(() => {}))
    expect(seen).toBeUndefined()
    inflight.stopAll(stopped, 2)
    expect(answers).toEqual([{ id: 1, ok: false, error: expect.objectContaining({ message: 'stopped' }) }])
    expect(inflight.cancel(1, stopped)).toEqual({ cancelled: false, killed: false })
    finish({ late: true })
    inflight.cancel(2, stopped)
    await inflight.settled()
    expect(answers.map((answer) => answer.id)).toEqual([1, 2])
    expect(answers.some((answer) => answer.ok)).toBe(false)
  })
})
