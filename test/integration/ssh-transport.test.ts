/**
 * SshTransport against a real OpenSSH sshd on 127.0.0.1 (started here, as the current user, with
 * generated keys). The QEMU tests cover the same transport against dropbear inside a guest.
 */
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, onTestFailed, test, vi } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { generateSshKeyPair, getSshFingerprint } from '../../src/transport/ssh-keys.js'
import { SshTransport } from '../../src/transport/ssh-transport.js'
import { getFreePort, getSshdSkipReason, startSshd, type StartedSshd } from '../helpers/sshd.js'

const skipReason = getSshdSkipReason()
if (skipReason) console.warn(`skipping ssh transport tests: ${skipReason}`)

describe.skipIf(Boolean(skipReason))('SshTransport against OpenSSH sshd on loopback', () => {
  const work = mkdtempSync(join(tmpdir(), 'vm-pool-ssh-work-'))
  let sshd: StartedSshd
  const transports: SshTransport[] = []
  const make = (extra: Partial<ConstructorParameters<typeof SshTransport>[0]> = {}) => {
    const transport = new SshTransport({ host: sshd.host, port: sshd.port, username: sshd.user, privateKey: sshd.clientKey.privateKey, hostKey: sshd.hostPublicKey, provider: 'ssh', ...extra })
    transports.push(transport)
    return transport
  }
  const acceptedConnections = () => sshd.log().split('\n').filter((line) => line.includes('Accepted publickey')).length

  beforeAll(async () => {
    sshd = await startSshd()
  })

  afterAll(async () => {
    for (const transport of transports) await transport.close()
    await sshd?.stop()
    rmSync(work, { recursive: true, force: true })
  })

  test('runs shell lines and argv over one persistent connection', async () => {
    // One connection allowed (by default more are opened on demand): this checks the queue on it.
    const ssh = make({ maxConnections: 1 })
    const before = acceptedConnections()
    expect(await ssh.exec('echo out; echo err >&2; exit 3')).toMatchObject({ exitCode: 3, stdout: 'out\n', stderr: 'err\n', timedOut: false })
    const words = ['a b', "it's", '$(echo pwned)', '`id`', '', '*']
    expect((await ssh.exec(['printf', '%s|', ...words])).stdout).toBe(words.map((w) => `${w}|`).join(''))
    expect((await ssh.exec('pwd; printf %s "$X"', { cwd: work, env: { X: "q'uote $HOME" } })).stdout).toBe(`${work}\nq'uote $HOME`)
    expect((await ssh.exec(['wc', '-c'], { input: Buffer.alloc(300_000, 'y') })).stdout.trim()).toBe('300000')
    const chunks: string[] = []
    const streamed = await ssh.exec('echo one; sleep 0.2; echo two', { onStdout: (chunk) => chunks.push(chunk) })
    expect(chunks.join('')).toBe(streamed.stdout)
    expect(chunks.length).toBeGreaterThanOrEqual(2)
    // Twelve at once: more than OpenSSH's MaxSessions (10); the transport queues instead of failing.
    const parallel = await Promise.all(Array.from({ length: 12 }, (_, i) => ssh.exec(`sleep 0.3; echo ${i}`)))
    expect(parallel.map((r) => r.stdout.trim())).toEqual(Array.from({ length: 12 }, (_, i) => String(i)))
    await new Promise((resolve) => setTimeout(resolve, 200))
    expect(acceptedConnections() - before).toBe(1)
    // Eighteen execs; a 2-core CI machine running other suites beside this one took over 20 s.
  }, 90_000)

  test('a timeout kills the command and its background children; the connection stays usable', async () => {
    const ssh = make()
    const tag = `${4000 + Math.floor(Math.random() * 1000)}.${randomBytes(2).readUInt16BE()}`
    const result = await ssh.exec(`sleep ${tag} & sleep ${tag}; echo not-reached`, { timeoutMs: 500 })
    expect(result).toMatchObject({ timedOut: true, exitCode: 124, stdout: '' })
    // Far below the sleep's 4000+ s: killed, not waited for (a busy machine may need EXEC_KILL_GRACE_MS on top).
    expect(result.durationMs).toBeLessThan(60_000)
    const leftover = spawnSync('pgrep', ['-f', `sleep ${tag}`], { encoding: 'utf8' })
    expect(leftover.stdout.trim()).toBe('')
    expect((await ssh.exec('echo alive')).stdout).toBe('alive\n')
  })

  test('an AbortSignal kills the command and rejects with VMPOOL_EXEC_ABORTED', async () => {
    const ssh = make()
    const marker = join(work, 'abort-marker')
    const gate = join(work, 'abort-gate')
    const controller = new AbortController()
    // The command touches the marker only once the gate exists, and the gate opens after the abort
    // returned: a busy machine cannot make the command finish before the kill arrives.
    const pending = ssh.exec(['sh', '-c', 'while [ ! -e "$2" ]; do sleep 0.1; done; touch "$1"', 'sh', marker, gate], { signal: controller.signal })
    setTimeout(() => controller.abort(), 200)
    await expect(pending).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_EXEC_ABORTED'))
    writeFileSync(gate, '')
    await new Promise((resolve) => setTimeout(resolve, 1_300))
    expect(existsSync(marker)).toBe(false)
  })

  test('an exec aborted while it waits for a free channel never runs', async () => {
    const ssh = make({ maxChannels: 1, maxConnections: 1 })
    const marker = join(work, 'queued-abort-marker')
    const busy = ssh.exec('sleep 0.6')
    const controller = new AbortController()
    const queued = ssh.exec(['touch', marker], { signal: controller.signal })
    setTimeout(() => controller.abort(), 200)
    await expect(queued).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_EXEC_ABORTED'))
    expect((await busy).exitCode).toBe(0)
    expect(existsSync(marker)).toBe(false)
  })

  test('after a burst, spare connections are opened up to the burst\'s size: the next burst of that size makes no new connection', async () => {
    const ssh = make({ maxChannels: 1, maxConnections: 16 })
    const before = acceptedConnections()
    // 12 at once, MAX_CONNECTING handshakes at a time: waiters take connections that free up as well.
    const first = await Promise.all(Array.from({ length: 12 }, (_, index) => ssh.exec(`echo ${index}`)))
    first.forEach((result, index) => expect(result.stdout).toBe(`${index}\n`))
    await vi.waitFor(() => expect(ssh.connectionCount).toBe(12), { timeout: 20_000, interval: 50 })
    await vi.waitFor(() => expect(acceptedConnections() - before).toBe(12), { timeout: 20_000, interval: 50 })
    // All 12 run at once on the kept ones (each waits for the others' marker files): no handshake more.
    const barrier = join(work, 'spare-barrier')
    mkdirSync(barrier)
    const second = await Promise.all(Array.from({ length: 12 }, (_, index) => ssh.exec(`touch ${barrier}/${index}; while [ $(ls ${barrier} | wc -l) -lt 12 ]; do sleep 0.05; done; echo ok`, { timeoutMs: 20_000 })))
    second.forEach((result) => expect(result).toMatchObject({ exitCode: 0, stdout: 'ok\n', timedOut: false }))
    expect(acceptedConnections() - before).toBe(12)
    expect(ssh.connectionCount).toBe(12)
  }, 60_000)

  test('putFile / getFile / execBuffer are binary-safe', async () => {
    const ssh = make()
    const data = randomBytes(1_000_000)
    const path = join(work, 'blob.bin')
    await ssh.putFile(path, data)
    expect(Buffer.compare(readFileSync(path), data)).toBe(0)
    expect(Buffer.compare(await ssh.getFile(path), data)).toBe(0)
    expect(Buffer.compare((await ssh.execBuffer(['cat', path])).stdout, data)).toBe(0)
    await expect(ssh.getFile(join(work, 'missing'))).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_EXEC_FAILED'))
  })

  test('reconnects once when the connection dropped', async () => {
    const ssh = make()
    expect((await ssh.exec('echo first')).stdout).toBe('first\n')
    const before = acceptedConnections()
    // Kill the per-connection sshd processes (children of the listener): the connection drops.
    const children = spawnSync('pgrep', ['-P', String(sshd.pid)], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean)
    expect(children.length).toBeGreaterThan(0)
    for (const child of children) process.kill(Number(child), 'SIGKILL')
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect((await ssh.exec('echo second')).stdout).toBe('second\n')
    await new Promise((resolve) => setTimeout(resolve, 200))
    expect(acceptedConnections() - before).toBe(1)
  })

  test('host key: the pinned key or its SHA256 fingerprint is accepted, another key is refused', async () => {
    expect((await make({ hostKey: getSshFingerprint(sshd.hostPublicKey) }).exec('echo pinned')).stdout).toBe('pinned\n')
    const other = generateSshKeyPair().publicKey
    const error = await make({ hostKey: other }).exec('echo never').catch((e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_HOST_KEY_MISMATCH')).toBe(true)
    expect((error as Error).message).toContain(getSshFingerprint(sshd.hostPublicKey))
  })

  test('a key the server does not trust fails with VMPOOL_AUTH_FAILED and no key material', async () => {
    const stranger = generateSshKeyPair()
    const error = await make({ privateKey: stranger.privateKey }).exec('true').catch((e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_AUTH_FAILED')).toBe(true)
    const text = `${(error as Error).message} ${JSON.stringify(error)}`
    expect(text).not.toContain('PRIVATE KEY')
    expect(text).not.toContain(stranger.privateKey.split('\n')[1]!.slice(0, 20))
  })

  test('nothing listening: a VmPoolError naming the target', async () => {
    const error = await make({ port: await getFreePort() }).exec('true').catch((e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_EXEC_FAILED')).toBe(true)
    expect((error as Error).message).toMatch(/could not connect to .*@127\.0\.0\.1:\d+/)
  })
})

/**
 * A server that refuses channels: OpenSSH answers a session beyond MaxSessions with a channel open failure
 * ("no more sessions" in its log), also for a moment when sessions that just closed are not freed yet (a
 * close and the next open read together by a busy sshd: the 12 parallel execs above hit that). The connection
 * is alive; ending it would end the commands on its other channels.
 */
describe.skipIf(Boolean(skipReason))('SshTransport against an sshd that refuses channels', () => {
  const started: StartedSshd[] = []
  const transports: SshTransport[] = []
  const startLimited = async (maxSessions: number) => {
    const limited = await startSshd({ maxSessions })
    started.push(limited)
    return limited
  }
  const connect = (server: StartedSshd, extra: Partial<ConstructorParameters<typeof SshTransport>[0]> = {}) => {
    const transport = new SshTransport({ host: server.host, port: server.port, username: server.user, privateKey: server.clientKey.privateKey, hostKey: server.hostPublicKey, ...extra })
    transports.push(transport)
    return transport
  }
  const accepted = (server: StartedSshd) => server.log().split('\n').filter((line) => line.includes('Accepted publickey')).length

  afterAll(async () => {
    for (const transport of transports) await transport.close()
    for (const server of started) await server.stop()
  })

  test('MaxSessions below maxChannels: refused channels wait for a free session; the running commands go on', async () => {
    const server = await startLimited(2)
    // maxChannels 8 (the default) on one connection, 2 allowed by the server: 3 of the 5 are refused at first.
    const ssh = connect(server, { maxConnections: 1 })
    const results = await Promise.all(Array.from({ length: 5 }, (_, i) => ssh.exec(`sleep 0.5; echo ${i}`)))
    expect(results.map((result) => result.stdout.trim())).toEqual(['0', '1', '2', '3', '4'])
    expect(server.log()).toContain('no more sessions')
    expect(accepted(server)).toBe(1)
  }, 60_000)

  // 60 s like the test above (sshd started under a full suite's load); it passes in ~1 s. Once, in a full run
  // (2026-11-28), it ran into the 20 s default: the sshd log is printed if it fails, to see where it was.
  test('MaxSessions 0: an exec fails with the refusal after a few tries, on the same connection, without hanging', async () => {
    const server = await startLimited(0)
    onTestFailed(() => console.error(`sshd log:\n${server.log()}`))
    // One connection: more would be refused alike (they are opened while the first one backs off).
    const ssh = connect(server, { maxConnections: 1 })
    const error = await ssh.exec('echo never').catch((e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_EXEC_FAILED')).toBe(true)
    expect((error as Error).message).toMatch(/refused an exec channel/)
    expect((error as Error).message).toMatch(/MaxSessions/)
    expect(accepted(server)).toBe(1)
  }, 60_000)
})
