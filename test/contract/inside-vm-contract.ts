/**
 * The part of the provider contract about working inside one VM (docs/providers.md): concurrent execs,
 * timeouts among them, files, directories as tar streams (modes, symlinks, empty dirs, an archive that
 * would write outside the target is refused) and port forwarding. Called by describeProviderContract
 * with the suite's VM; every guest file lives under `contract-inside/` in the VM user's home.
 */
import { randomBytes } from 'node:crypto'
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import type { Vm } from '../../src/providers/vm-provider.js'
import { scaleTimeout } from '../../src/util/timeouts.js'

export interface InsideVmContractOptions {
  /** `unsupported`: forwardPort must reject with VMPOOL_UNSUPPORTED and a hint (the tool cannot forward). @default 'supported' */
  forwardPort?: 'supported' | 'unsupported'
}

/** The guest directory every test here writes under (the ssh contract's reset removes it). */
export const INSIDE_DIR = 'contract-inside'
const CONCURRENT_EXECS = 24

/** GET over a forward: the body, or the error (ECONNREFUSED once the forward is closed). */
function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false, timeout: scaleTimeout(15_000) }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error('timed out')))
    req.on('error', reject)
    req.end()
  })
}

async function waitForHttp(port: number, path: string): Promise<{ status: number; body: string }> {
  const deadline = Date.now() + scaleTimeout(30_000)
  for (;;) {
    try {
      const answer = await httpGet(port, path)
      if (answer.status === 200) return answer
    } catch (error) {
      if (Date.now() > deadline) throw error
    }
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}

/** `reconnect` gives a second Vm object for the same VM (to check that closing it closes its forwards). */
export function describeInsideVmContract(getVm: () => Vm, reconnect: () => Promise<Vm>, options: InsideVmContractOptions = {}): void {
  const local = mkdtempSync(join(tmpdir(), 'vm-pool-inside-contract-'))
  afterAll(() => rmSync(local, { recursive: true, force: true }))
  const unique = () => randomBytes(4).toString('hex')

  test('a server exec and a client exec at the same time: the client finishes while the server runs', async () => {
    const vm = getVm()
    const id = unique()
    expect((await vm.exec(['mkdir', '-p', INSIDE_DIR])).exitCode).toBe(0)
    // The "server" runs until the client has written its mark: queued behind it, the client would never run.
    const server = vm.exec(`while [ ! -e ${INSIDE_DIR}/client-${id} ]; do sleep 0.1; done; echo server-saw-client`, { timeoutMs: scaleTimeout(90_000) })
    const client = await vm.exec(`echo client-done; touch ${INSIDE_DIR}/client-${id}`, { timeoutMs: scaleTimeout(60_000) })
    expect(client).toMatchObject({ exitCode: 0, stdout: 'client-done\n', timedOut: false })
    expect(await server).toMatchObject({ exitCode: 0, stdout: 'server-saw-client\n', timedOut: false })
  }, scaleTimeout(120_000))

  test(`${CONCURRENT_EXECS} concurrent execs all run at once and each gets its own output`, async () => {
    const vm = getVm()
    const barrier = `${INSIDE_DIR}/barrier-${unique()}`
    expect((await vm.exec(['mkdir', '-p', barrier])).exitCode).toBe(0)
    // Each exec waits until all of them have started: this only finishes when they run concurrently.
    // The wait is a shell glob and a 1 s sleep: 24 polling loops must not starve a 1-vCPU emulated guest.
    // If one fails, the others are stopped: left waiting, they would load the VM for the next tests.
    const stop = new AbortController()
    const results = await Promise.all(
      Array.from({ length: CONCURRENT_EXECS }, (_, index) =>
        vm.exec(`touch ${barrier}/${index}; while set -- ${barrier}/*; [ $# -lt ${CONCURRENT_EXECS} ]; do sleep 1; done; echo exec-${index}; echo err-${index} >&2`, { timeoutMs: scaleTimeout(150_000), signal: stop.signal }),
      ),
    ).finally(() => stop.abort())
    results.forEach((result, index) => {
      expect(result).toMatchObject({ exitCode: 0, stdout: `exec-${index}\n`, timedOut: false })
      // The ssh provider's hosts run the user's login shell: its start-up files may warn on stderr when
      // 24 shells start at once (pyenv's rehash lock). Never our protocol's markers, though.
      expect(result.stderr.endsWith(`err-${index}\n`)).toBe(true)
      expect(result.stderr).not.toContain('\u001e')
      expect(result.stderr).not.toContain('vm-pool-pid')
    })
  }, scaleTimeout(180_000))

  test('a timeout while other execs run kills only that command', async () => {
    const vm = getVm()
    const others = Array.from({ length: 3 }, (_, index) => vm.exec(`sleep 2; echo other-${index}`, { timeoutMs: scaleTimeout(60_000) }))
    const slow = await vm.exec('sleep 60; echo never', { timeoutMs: 1_000 })
    expect(slow).toMatchObject({ exitCode: 124, timedOut: true, stdout: '' })
    expect(slow.durationMs).toBeLessThan(scaleTimeout(30_000))
    const done = await Promise.all(others)
    done.forEach((result, index) => expect(result).toMatchObject({ exitCode: 0, stdout: `other-${index}\n`, timedOut: false }))
    expect((await vm.exec('echo still-here')).stdout).toBe('still-here\n')
  }, scaleTimeout(90_000))

  test('a large output keeps its head and tail within maxOutputBytes and says how much was dropped', async () => {
    const vm = getVm()
    const chunks: string[] = []
    // 20000 numbered lines of 8 bytes: 160000 bytes, far over the 4096 kept.
    const result = await vm.exec("i=1000000; while [ $i -lt 1020000 ]; do echo $i; i=$((i + 1)); done", { maxOutputBytes: 4096, onStdout: (chunk) => chunks.push(chunk), timeoutMs: scaleTimeout(60_000) })
    expect(result.exitCode).toBe(0)
    expect(chunks.join('').length).toBe(160_000)
    expect(result.stdoutDroppedBytes).toBe(160_000 - 4096)
    expect(result.stdout.startsWith('1000000\n1000001\n')).toBe(true)
    expect(result.stdout.endsWith('1019998\n1019999\n')).toBe(true)
    expect(result.stdout).toContain(`[vm-pool: ${160_000 - 4096} bytes of stdout dropped (maxOutputBytes)]`)
    expect(result.stderrDroppedBytes).toBeUndefined()
  }, scaleTimeout(90_000))

  test('putFile / getFile round-trip binary data, 3 MB included', async () => {
    const vm = getVm()
    await vm.exec(['mkdir', '-p', INSIDE_DIR])
    const data = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7) % 256))
    await vm.putFile(`${INSIDE_DIR}/binary.bin`, data)
    expect(Buffer.compare(await vm.getFile(`${INSIDE_DIR}/binary.bin`), data)).toBe(0)
    expect((await vm.exec(['wc', '-c', `${INSIDE_DIR}/binary.bin`])).stdout).toMatch(/^\s*4096 /)
    await vm.putFile(`${INSIDE_DIR}/text.txt`, "it's text\n")
    expect((await vm.getFile(`${INSIDE_DIR}/text.txt`)).toString()).toBe("it's text\n")
    const big = randomBytes(3 * 1024 * 1024)
    await vm.putFile(`${INSIDE_DIR}/big.bin`, big)
    expect(Buffer.compare(await vm.getFile(`${INSIDE_DIR}/big.bin`), big)).toBe(0)
    await expect(vm.getFile(`${INSIDE_DIR}/no-such-file`)).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_EXEC_FAILED'))
  }, scaleTimeout(120_000))

  test('putDirectory / getDirectory round trip: contents, modes, symlinks and empty directories', async () => {
    const vm = getVm()
    const source = join(local, `tree-${unique()}`)
    mkdirSync(join(source, 'sub/deeper'), { recursive: true })
    mkdirSync(join(source, 'empty'))
    mkdirSync(join(source, 'read-only'))
    writeFileSync(join(source, 'a.txt'), 'alpha\n', { mode: 0o644 })
    writeFileSync(join(source, 'run.sh'), '#!/bin/sh\necho ran\n', { mode: 0o755 })
    writeFileSync(join(source, 'private'), 'secret-ish\n', { mode: 0o600 })
    writeFileSync(join(source, 'sub/deeper/data.bin'), randomBytes(70_000))
    writeFileSync(join(source, 'read-only/inside.txt'), 'in a 0555 dir\n')
    // Over ustar's 100 + 155 bytes with a 124-byte last component: a pax header one way, a GNU long name the other.
    const longName = `${'x'.repeat(60)}/${'y'.repeat(60)}/${'z'.repeat(120)}.txt`
    mkdirSync(join(source, longName, '..'), { recursive: true })
    writeFileSync(join(source, longName), 'long path\n')
    symlinkSync('a.txt', join(source, 'link-to-a'))
    symlinkSync('/etc/hostname', join(source, 'link-out'))
    for (const [path, mode] of [['a.txt', 0o644], ['run.sh', 0o755], ['private', 0o600], ['empty', 0o750], ['read-only', 0o555]] as const) {
      // chmod after writing: the umask may have cut the modes given at creation.
      execChmod(join(source, path), mode)
    }

    const guestDir = `${INSIDE_DIR}/copied-${unique()}`
    await vm.putDirectory(source, guestDir)
    const listing = await vm.exec(`cd ${guestDir} && stat -c '%a %n' a.txt run.sh private empty read-only && readlink link-to-a && readlink link-out && ./run.sh && cat ${longName}`)
    expect(listing).toMatchObject({ exitCode: 0 })
    expect(listing.stdout).toBe('644 a.txt\n755 run.sh\n600 private\n750 empty\n555 read-only\na.txt\n/etc/hostname\nran\nlong path\n')

    const back = join(local, `back-${unique()}`)
    await vm.getDirectory(guestDir, back)
    const modeOf = (path: string) => statSync(join(back, path)).mode & 0o777
    expect(readFileSync(join(back, 'a.txt'), 'utf8')).toBe('alpha\n')
    expect(Buffer.compare(readFileSync(join(back, 'sub/deeper/data.bin')), readFileSync(join(source, 'sub/deeper/data.bin')))).toBe(0)
    expect(readFileSync(join(back, longName), 'utf8')).toBe('long path\n')
    expect(readFileSync(join(back, 'read-only/inside.txt'), 'utf8')).toBe('in a 0555 dir\n')
    expect({ a: modeOf('a.txt'), run: modeOf('run.sh'), private: modeOf('private'), empty: modeOf('empty'), readOnly: modeOf('read-only') }).toEqual({ a: 0o644, run: 0o755, private: 0o600, empty: 0o750, readOnly: 0o555 })
    expect(readdirSync(join(back, 'empty'))).toEqual([])
    expect(lstatSync(join(back, 'link-to-a')).isSymbolicLink()).toBe(true)
    expect(readlinkSync(join(back, 'link-to-a'))).toBe('a.txt')
    expect(readlinkSync(join(back, 'link-out'))).toBe('/etc/hostname')
    execChmod(join(back, 'read-only'), 0o755)
  }, scaleTimeout(120_000))

  test('getDirectory refuses to write through a symlink pointing out of the target, and writes nothing there', async () => {
    const vm = getVm()
    const guestDir = `${INSIDE_DIR}/escape-${unique()}`
    expect((await vm.exec(`mkdir -p ${guestDir}/escape && echo pwned > ${guestDir}/escape/pwned.txt && echo fine > ${guestDir}/fine.txt`)).exitCode).toBe(0)
    const victim = join(local, `victim-${unique()}`)
    const target = join(local, `target-${unique()}`)
    mkdirSync(victim)
    mkdirSync(target)
    // A link in the target that points elsewhere: the archive's `escape/pwned.txt` would land in the victim.
    symlinkSync(victim, join(target, 'escape'))
    await expect(vm.getDirectory(guestDir, target)).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_UNSAFE_PATH') && /escape/.test(error.message) && error.hint !== undefined)
    expect(readdirSync(victim)).toEqual([])
  }, scaleTimeout(60_000))

  if (options.forwardPort === 'unsupported') {
    test('forwardPort is refused with VMPOOL_UNSUPPORTED and a hint saying how to reach the guest', async () => {
      const vm = getVm()
      await expect(vm.forwardPort(8080)).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_UNSUPPORTED') && error.operation === 'forwardPort' && /8080/.test(error.hint ?? ''))
      await expect(vm.forwardPort(0)).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS'))
    })
    return
  }

  test('forwardPort: 127.0.0.1 reaches a server on the guest loopback, until closed', async () => {
    const vm = getVm()
    const www = `${INSIDE_DIR}/www-${unique()}`
    expect((await vm.exec(`mkdir -p ${www} && echo hello-from-guest > ${www}/index.html`)).exitCode).toBe(0)
    const guestPort = 20_000 + Math.floor(Math.random() * 20_000)
    const stop = new AbortController()
    // busybox httpd exists in the minimal image and on the hosts CI runs the other providers on.
    const server = vm.exec(`exec busybox httpd -f -p 127.0.0.1:${guestPort} -h ${www}`, { signal: stop.signal }).catch((error: unknown) => error)
    try {
      const forward = await vm.forwardPort(guestPort)
      expect(forward.host).toBe('127.0.0.1')
      expect(forward.guestPort).toBe(guestPort)
      expect(await waitForHttp(forward.port, '/index.html')).toEqual({ status: 200, body: 'hello-from-guest\n' })
      const again = await Promise.all(Array.from({ length: 5 }, () => httpGet(forward.port, '/index.html')))
      again.forEach((answer) => expect(answer.body).toBe('hello-from-guest\n'))
      await forward.close()
      await forward.close()
      await expect(httpGet(forward.port, '/index.html')).rejects.toMatchObject({ code: 'ECONNREFUSED' })

      // A chosen host port, closed by disposing it.
      const chosen = await (async () => {
        await using second = await vm.forwardPort(guestPort, { hostPort: forward.port })
        expect(second.port).toBe(forward.port)
        expect((await waitForHttp(second.port, '/index.html')).body).toBe('hello-from-guest\n')
        return second.port
      })()
      await expect(httpGet(chosen, '/index.html')).rejects.toMatchObject({ code: 'ECONNREFUSED' })

      // Closing a Vm closes the forwards it opened.
      const other = await reconnect()
      const third = await other.forwardPort(guestPort)
      expect((await waitForHttp(third.port, '/index.html')).body).toBe('hello-from-guest\n')
      await other.close?.()
      await expect(httpGet(third.port, '/index.html')).rejects.toMatchObject({ code: 'ECONNREFUSED' })
      await expect(vm.forwardPort(70_000)).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS'))
    } finally {
      stop.abort()
      await server
    }
  }, scaleTimeout(90_000))
}

function execChmod(path: string, mode: number): void {
  if (lstatSync(path).isSymbolicLink()) throw new Error(`${path} is a symlink`)
  chmodSync(path, mode)
}
