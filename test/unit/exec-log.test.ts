import { expect, test } from 'vitest'
import { describeExec } from '../../src/providers/exec-log.js'

const vm = { name: 'vm-a', provider: 'qemu' }

test('an exec line names provider, VM, outcome, duration, command, cwd and env; secret-looking env values never appear', () => {
  const line = describeExec(vm, ['sh', '-c', 'echo "$X"'], { cwd: '/work', env: { GITHUB_TOKEN: 'ghp_s3cr3t', DB_PASSWORD: 'hunter2', MODE: 'ci' }, input: 'abc' }, { result: { exitCode: 3, stdout: '', stderr: '', durationMs: 12, timedOut: false } }, 12)
  expect(line).toBe('qemu vm-a: exit 3 in 12 ms: sh -c "echo \\"$X\\""  [cwd=/work, env GITHUB_TOKEN=[redacted] DB_PASSWORD=[redacted] MODE=ci, stdin 3 bytes]')
  expect(line).not.toContain('ghp_s3cr3t')
  expect(line).not.toContain('hunter2')
})

test('timeouts, failures, dropped output and long commands', () => {
  expect(describeExec(vm, 'sleep 9', {}, { result: { exitCode: 124, stdout: '', stderr: '', durationMs: 5, timedOut: true } }, 5)).toBe('qemu vm-a: timed out in 5 ms: sleep 9')
  expect(describeExec(vm, 'true', {}, { error: Object.assign(new Error('x'), { name: 'TypeError' }) }, 1)).toBe('qemu vm-a: failed (TypeError) in 1 ms: true')
  expect(describeExec(vm, 'yes', {}, { result: { exitCode: 0, stdout: '', stderr: '', durationMs: 1, timedOut: false, stdoutDroppedBytes: 99 } }, 1)).toContain('[stdout: 99 bytes dropped]')
  const long = describeExec(vm, `echo ${'a'.repeat(500)}\necho b`, {}, { result: { exitCode: 0, stdout: '', stderr: '', durationMs: 1, timedOut: false } }, 1)
  expect(long).toMatch(/: echo a{195}… \(513 chars\)$/)
})
