import { onTestFinished } from 'vitest'
import type { ExecOptions } from '../providers/vm-provider.js'

/** What `logOutput` returns: spread it into `vm.exec`'s options. */
export type LoggedOutput = Required<Pick<ExecOptions, 'onStdout' | 'onStderr'>>

/**
 * `vm.exec(cmd, { ...logOutput('build') })`: the command's output, line by line as it comes, in the
 * test's own output (`console.log` for stdout, `console.error` for stderr, each line prefixed
 * `[label] `), so Vitest shows it under the test that ran it. Chunks arrive cut anywhere: a partial
 * line waits for its end, or for the end of the test. Bounded results (`maxOutputBytes`) do not limit it.
 */
export function logOutput(label?: string): LoggedOutput {
  const prefix = label === undefined ? '' : `[${label}] `
  const make = (write: (line: string) => void) => {
    let partial = ''
    const onChunk = (chunk: string) => {
      const lines = (partial + chunk).split('\n')
      partial = lines.pop()!
      for (const line of lines) write(`${prefix}${line}`)
    }
    const flush = () => {
      if (partial !== '') write(`${prefix}${partial}`)
      partial = ''
    }
    return { onChunk, flush }
  }
  const stdout = make((line) => console.log(line))
  const stderr = make((line) => console.error(line))
  try {
    onTestFinished(() => {
      stdout.flush()
      stderr.flush()
    })
  } catch {
    // Outside a test (beforeAll): a last line without a newline stays unprinted.
  }
  return { onStdout: stdout.onChunk, onStderr: stderr.onChunk }
}
