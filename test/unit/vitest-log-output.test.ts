import { afterAll, expect, test } from 'vitest'
import { logOutput } from '../../src/vitest/log-output.js'

// Plain replacements, not spies: the config clears mocks between tests, and the second test reads what the first left.
const logged: string[] = []
const errored: string[] = []
const original = { log: console.log, error: console.error }
console.log = (line: string) => void logged.push(line)
console.error = (line: string) => void errored.push(line)
afterAll(() => {
  console.log = original.log
  console.error = original.error
})

test('logOutput prints whole lines with the label as chunks come, stdout to console.log and stderr to console.error', () => {
  const output = logOutput('server')
  output.onStdout('listening on 8080\nGET /in')
  expect(logged).toEqual(['[server] listening on 8080'])
  output.onStdout('dex.html 200\n\n')
  output.onStderr('warn: slow\n')
  expect(logged).toEqual(['[server] listening on 8080', '[server] GET /index.html 200', '[server] '])
  expect(errored).toEqual(['[server] warn: slow'])
  output.onStdout('no newline at the end')
  expect(logged).toHaveLength(3)
})

test('a last line without a newline is printed when its test finishes', () => {
  expect(logged).toEqual(['[server] listening on 8080', '[server] GET /index.html 200', '[server] ', '[server] no newline at the end'])
  expect(errored).toEqual(['[server] warn: slow'])
})
