/**
 * The SSH exec protocol's stderr markers (src/transport/ssh-exec-protocol.ts), without a server: every
 * stream is fed whole and split at every byte, since SSH delivers stderr in arbitrary chunks.
 */
import { describe, expect, test } from 'vitest'
import { buildSshExecScript, remoteKillCommand, SshStderrParser, type KillTarget } from '../../src/transport/ssh-exec-protocol.js'

const PID = '\u001evm-pool-pid '
const EXIT = '\u001evm-pool-exit '

function parse(stream: string, killable: boolean, splitAt?: number) {
  const targets: Array<KillTarget | undefined> = []
  const text: string[] = []
  const parser = new SshStderrParser(killable, (target) => targets.push(target), (chunk) => text.push(chunk))
  const bytes = Buffer.from(stream, 'utf8')
  for (const part of splitAt === undefined ? [bytes] : [bytes.subarray(0, splitAt), bytes.subarray(splitAt)]) parser.push(part)
  const exit = parser.end()
  return { pids: targets.map((target) => target?.pid), stderr: text.join(''), exit, targets }
}

const cases: Array<{ name: string; stream: string; killable: boolean; pids: Array<number | undefined>; stderr: string; exit: number | undefined }> = [
  { name: 'pid and exit markers around output', stream: `${PID}4242\nboom\n${EXIT}3\n`, killable: true, pids: [4242], stderr: 'boom\n', exit: 3 },
  { name: 'no output at all', stream: `${PID}7\n${EXIT}0\n`, killable: true, pids: [7], stderr: '', exit: 0 },
  { name: 'not killable: no pid line expected', stream: `warn: é\n${EXIT}1\n`, killable: false, pids: [], stderr: 'warn: é\n', exit: 1 },
  { name: 'first line is not the marker', stream: `oops\n${EXIT}2\n`, killable: true, pids: [undefined], stderr: 'oops\n', exit: 2 },
  { name: 'shell start-up noise before the pid line stays stderr', stream: `rc: warning\nmore noise\n${PID}31\nboom\n${EXIT}1\n`, killable: true, pids: [31], stderr: 'rc: warning\nmore noise\nboom\n', exit: 1 },
  { name: 'a 0x1e byte that is not a marker stays in stderr', stream: `${PID}9\na\u001eb\n${EXIT}0\n`, killable: true, pids: [9], stderr: 'a\u001eb\n', exit: 0 },
  { name: 'a cut-off exit marker is stderr, not a status', stream: `${PID}9\nx\n${EXIT}`, killable: true, pids: [9], stderr: `x\n${EXIT}`, exit: undefined },
  { name: 'stderr without a final newline: the marker follows on the same line', stream: `${PID}9\nno newline${EXIT}5\n`, killable: true, pids: [9], stderr: 'no newline', exit: 5 },
  { name: 'the marker followed by more output is not the last line, so not a marker', stream: `${PID}9\n${EXIT}5\nmore\n`, killable: true, pids: [9], stderr: `${EXIT}5\nmore\n`, exit: undefined },
]

describe('SshStderrParser', () => {
  test.each(cases)('$name', ({ stream, killable, pids, stderr, exit }) => {
    for (let at = 0; at <= Buffer.byteLength(stream); at++) {
      expect(parse(stream, killable, at), `split at byte ${at}`).toMatchObject({ pids, stderr, exit })
    }
  })
})

describe('the pid line of a command in a group its connection leads', () => {
  test.each([
    { stream: `${PID}50 49 1234\nboom\n${EXIT}0\n`, target: { pid: 50, group: { id: 49, since: 1234 } } },
    { stream: `${PID}50 49 0\n${EXIT}0\n`, target: { pid: 50, group: { id: 49, since: 0 } } },
    { stream: `${PID}50 49\n${EXIT}0\n`, target: undefined },
    { stream: `${PID}50 0 7\n${EXIT}0\n`, target: undefined },
    { stream: `${PID}50 x 7\n${EXIT}0\n`, target: undefined },
  ])('$stream', ({ stream, target }) => {
    for (let at = 0; at <= Buffer.byteLength(stream); at++) expect(parse(stream, true, at).targets, `split at byte ${at}`).toEqual([target])
  })

  test('the script offers it only for one command per connection; the kill spares the leader and older processes', () => {
    expect(buildSshExecScript('sleep 1', {}, true, true)).toContain('[ 1 = 1 ] && [ "$2" = "$3" ]')
    expect(buildSshExecScript('sleep 1', {}, true, false)).toContain('[ 0 = 1 ] && [ "$2" = "$3" ]')
    const kill = remoteKillCommand({ pid: 50, group: { id: 49, since: 1234 } })
    expect(kill.split('\n')[0]).toBe('g=49; t=1234')
    expect(kill).toContain('[ "$3" = "$g" ] && [ "$p" != "$g" ] && [ "${20:-0}" -ge "$t" ] && kill -9 "$p"')
    expect(() => remoteKillCommand({ pid: 50, group: { id: 0, since: 1 } })).toThrow(/not a group/)
    expect(() => remoteKillCommand({ pid: 50, group: { id: 49, since: -1 } })).toThrow(/not a group/)
  })
})

describe('scripts', () => {
  test('only killable commands get the pid preamble; every command reports its exit status', () => {
    const plain = buildSshExecScript(['echo', 'a b'], {}, false)
    const killable = buildSshExecScript(['echo', 'a b'], { cwd: 'w', env: { X: '1' } }, true)
    expect(plain).not.toContain('vm-pool-pid')
    expect(plain).toContain("trap 'printf")
    expect(plain).toContain("echo 'a b'")
    expect(killable.split('\n')[0]).toContain('vm-pool-pid')
    expect(killable).toContain('setsid')
    expect(killable).toContain('export X=1')
  })

  test('the kill command targets the group, then the pid; a non-pid is refused', () => {
    expect(remoteKillCommand(123)).toBe('kill -9 -123 2>/dev/null || kill -9 123 2>/dev/null; exit 0')
    for (const bad of [0, -1, 1.5, Number.NaN]) expect(() => remoteKillCommand(bad)).toThrow(/not a pid/)
  })
})
