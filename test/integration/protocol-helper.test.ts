/**
 * `vm-pool protocol` as a runner sees it: the real helper process (dist/cli/main.js) on the fake provider
 * in a temp state dir, driven over its stdin/stdout. Messages and errors, every op, concurrency and
 * streaming, binary files, warm sharing, and the lifecycle: stdin EOF, the runner's pid, SIGKILL of the
 * helper (its reaper). forwardPort needs `vm.forwardPort` on the fake provider (the Vm contract's port forwarding).
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeAll, describe, expect, test } from 'vitest'
import { ensureDistBuilt, isPidRunning, makeStateDir, waitFor } from '../../fixtures/pool/harness.js'
import { ProtocolClient, ProtocolRequestError, type ProtocolEvent } from '../helpers/protocol-client.js'

let state: ReturnType<typeof makeStateDir>
const clients: ProtocolClient[] = []

const start = (options: ConstructorParameters<typeof ProtocolClient>[0] = {}) => {
  const client = new ProtocolClient({ ...options, env: { VM_POOL_STATE_DIR: state.dir, VM_POOL_PROVIDER: 'fake', ...options.env } })
  clients.push(client)
  return client
}
const fakeVms = () => (existsSync(join(state.dir, 'fake')) ? readdirSync(join(state.dir, 'fake')).sort() : [])
const failure = async (promise: Promise<unknown>) => {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(ProtocolRequestError)
  return (error as ProtocolRequestError).error
}

beforeAll(async () => {
  await ensureDistBuilt()
}, 180_000)

afterEach(async () => {
  for (const client of clients.splice(0)) {
    client.kill()
    await client.exited
  }
  // The reaper of a killed helper may still be deleting: let it finish before the dir goes.
  await waitFor(() => fakeVms().length === 0, 'VMs of the test to be gone').catch(() => {})
  state?.dispose()
})

describe('messages', () => {
  test('hello answers the protocol, versions and the pool; anything else first, a second hello, another protocol: clear errors', async () => {
    state = makeStateDir()
    const client = start()
    expect(await failure(client.request('acquire'))).toMatchObject({ code: 'VMPOOL_INVALID_OPTIONS', message: 'acquire before hello', hint: expect.stringContaining('"op": "hello"') })
    expect(await failure(client.hello({}, { protocol: 2 }))).toMatchObject({ code: 'VMPOOL_INVALID_OPTIONS', message: 'this helper speaks protocol 1, the client asked for 2' })
    const other = start()
    const hello = await other.hello({}, { check: true })
    expect(hello).toMatchObject({ protocol: 1, version: expect.stringMatching(/^\d+\.\d+\.\d+/), node: process.versions.node, pid: other.child.pid, provider: 'fake', runId: expect.stringMatching(/^[a-z0-9]{8}$/), stateDir: state.dir, probe: { usable: true } })
    expect(await failure(other.hello({}))).toMatchObject({ code: 'VMPOOL_INVALID_OPTIONS', message: expect.stringContaining('hello was already sent') })
  })

  test('a line that is not JSON, an unknown op, a bad field: errors naming the problem (id null when there is none)', async () => {
    state = makeStateDir()
    const client = start()
    await client.hello({})
    client.sendRaw('{ not json')
    await waitFor(() => client.messages.some((m) => m.id === null), 'the answer to a bad line')
    expect(client.messages.find((m) => m.id === null)).toMatchObject({ ok: false, error: { code: 'VMPOOL_INVALID_OPTIONS', message: 'a request line is not JSON' } })
    expect(await failure(client.request('teleport'))).toMatchObject({ message: 'unknown op "teleport"', hint: expect.stringContaining('acquire, fresh, exec') })
    expect(await failure(client.request('exec', { vm: 'x' }))).toMatchObject({ message: expect.stringMatching(/^invalid exec request: command: /) })
    expect(await failure(client.request('putFile', { vm: 'x', path: '/a', data: 'AAAA', localPath: '/b' }))).toMatchObject({ message: expect.stringContaining('give exactly one of data (base64) or localPath') })
    expect(await failure(client.request('exec', { vm: 'nope', command: 'true' }))).toMatchObject({ code: 'VMPOOL_VM_NOT_FOUND', vm: 'nope' })
    expect(await failure(client.request('hello', { protocol: 1, pool: { provider: 'fake', colour: 'red' } }))).toMatchObject({ message: expect.stringContaining('Unrecognized key: "colour"') })
  })

  test('an unknown provider and bad provider options fail the hello, with the fix', async () => {
    state = makeStateDir()
    expect(await failure(start().hello({ provider: 'nope' }))).toMatchObject({ code: 'VMPOOL_INVALID_OPTIONS', message: 'unknown provider "nope"', hint: expect.stringContaining('qemu') })
    expect(await failure(start({ env: { VM_POOL_PROVIDER_OPTIONS: '{"token":SECRET' } }).hello({}))).toMatchObject({ message: 'VM_POOL_PROVIDER_OPTIONS is not valid JSON' })
  })
})

describe('VMs', () => {
  test('acquire: the same key → the same VM; an explicit pytest-worker name; fresh VMs distinct and deleted on release', async () => {
    state = makeStateDir()
    const client = start()
    const { runId } = await client.hello({ freshPrefix: 'pytest-fresh' })
    const worker = await client.request('acquire')
    expect(worker).toMatchObject({ vm: `vm-pool-runner-${runId}-worker`, key: 'worker', adopted: false })
    expect((await client.request('acquire')).vm).toBe(worker.vm)
    const name = `pytest-worker-${process.pid}-${Math.floor(Date.now() / 1000)}`
    const named = await client.request('acquire', { key: 'gw0', name })
    expect(named.vm).toBe(name)
    expect(await client.request('exec', { vm: name, command: 'printf %s "$VM_POOL_VM"' })).toMatchObject({ exitCode: 0, stdout: name })
    const dead = `pytest-worker-999999-${Math.floor(Date.now() / 1000)}`
    expect(await failure(client.request('acquire', { key: 'gw1', name: dead }))).toMatchObject({ code: 'VMPOOL_INVALID_NAME', message: expect.stringContaining('pid 999999 is gone') })
    const a = await client.request('fresh')
    const b = await client.request('fresh', { spec: { labels: { purpose: 'test' } } })
    expect([a.vm, b.vm]).toEqual([`pytest-fresh-${runId}-1`, `pytest-fresh-${runId}-2`])
    expect(fakeVms()).toEqual([name, a.vm, b.vm, worker.vm].sort())
    await client.request('release', { vm: a.vm })
    expect(fakeVms()).not.toContain(a.vm)
    expect(await failure(client.request('exec', { vm: a.vm, command: 'true' }))).toMatchObject({ code: 'VMPOOL_VM_NOT_FOUND' })
    // keep: a fresh VM left running (debug), forgotten by the helper.
    await client.request('release', { vm: b.vm, keep: true })
    expect(await failure(client.request('release', { vm: worker.vm, keep: true }))).toMatchObject({ message: expect.stringContaining('keep is for fresh VMs') })
    const drained = await client.request('drain')
    expect(drained).toMatchObject({ deleted: expect.arrayContaining([worker.vm, name]), leaked: [], stats: { created: 4, deleted: 3, leaked: 0 } })
    expect(fakeVms()).toEqual([b.vm])
    rmSync(join(state.dir, 'fake', b.vm), { recursive: true })
    expect(await client.close()).toEqual({ code: 0, signal: null })
  })

  test('reset: a provider without snapshots says so; a fresh VM is not reset', async () => {
    state = makeStateDir()
    const client = start()
    await client.hello({})
    const { vm } = await client.request('acquire')
    expect(await failure(client.request('reset', { vm }))).toMatchObject({ code: 'VMPOOL_INVALID_OPTIONS', message: 'fake cannot reset a VM to a snapshot' })
    const fresh = await client.request('fresh')
    expect(await failure(client.request('reset', { vm: fresh.vm }))).toMatchObject({ message: expect.stringContaining('is a fresh VM') })
  })

  test('keepWarm through the protocol: a drained helper leaves its VM idle, the next helper adopts it', async () => {
    state = makeStateDir()
    const first = start()
    await first.hello({ keepWarm: true })
    const { vm } = await first.request('acquire', { name: `pytest-worker-${process.pid}-${Math.floor(Date.now() / 1000)}` })
    await first.request('exec', { vm, command: 'touch left-by-first' })
    expect(await first.request('drain')).toMatchObject({ keptWarm: [vm], stats: { created: 1, warmed: 1 } })
    await first.close()
    const second = start()
    await second.hello({ keepWarm: true })
    const adopted = await second.request('acquire', { name: `pytest-worker-${process.pid}-${Math.floor(Date.now() / 1000) + 1}` })
    expect(adopted).toMatchObject({ vm, adopted: true })
    expect((await second.request('exec', { vm, command: 'ls' })).stdout).toBe('left-by-first\n')
    expect(await second.request('drain', { discard: true })).toMatchObject({ deleted: [vm], stats: { created: 0, reused: 1 } })
  })
})

describe('exec and files', () => {
  test('argv and shell lines, cwd, env, input (text and bytes), timeout: the ExecResult fields', async () => {
    state = makeStateDir()
    const client = start()
    await client.hello({})
    const { vm } = await client.request('acquire')
    expect(await client.request('exec', { vm, command: ['printf', '%s|', 'two words', '$HOME', "it's"] })).toMatchObject({ exitCode: 0, stdout: "two words|$HOME|it's|", stderr: '', timedOut: false, durationMs: expect.any(Number) })
    expect(await client.request('exec', { vm, command: 'echo out; echo err >&2; exit 3' })).toMatchObject({ exitCode: 3, stdout: 'out\n', stderr: 'err\n' })
    await client.request('exec', { vm, command: 'mkdir -p sub' })
    expect((await client.request('exec', { vm, command: 'basename "$PWD"; printf %s "$GREETING"', cwd: 'sub', env: { GREETING: 'hi there' } })).stdout).toBe('sub\nhi there')
    expect((await client.request('exec', { vm, command: 'cat', input: 'typed ✓\n' })).stdout).toBe('typed ✓\n')
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i))
    expect((await client.request('exec', { vm, command: 'wc -c', inputBase64: bytes.toString('base64') })).stdout.toString().trim()).toBe('256')
    expect(await client.request('exec', { vm, command: 'sleep 30', timeoutMs: 300 })).toMatchObject({ timedOut: true, exitCode: 124 })
  })

  test('stream: output events arrive, in order, before the answer; requests run concurrently and are answered by id', async () => {
    state = makeStateDir()
    const client = start()
    await client.hello({})
    const { vm } = await client.request('acquire')
    const events: ProtocolEvent[] = []
    const streamed = await client.request('exec', { vm, command: 'for i in 1 2 3; do echo line $i; sleep 0.1; done; echo oops >&2', stream: true }, (event) => events.push(event))
    expect(events.filter((e) => e.event === 'stdout').map((e) => e.data).join('')).toBe('line 1\nline 2\nline 3\n')
    expect(events.filter((e) => e.event === 'stderr').map((e) => e.data).join('')).toBe('oops\n')
    expect(streamed).toMatchObject({ stdout: 'line 1\nline 2\nline 3\n', stderr: 'oops\n' })
    // A server-like exec and a quick one at the same time: the quick one answers first.
    const order: string[] = []
    const slow = client.request('exec', { vm, command: 'sleep 1.5; echo slow' }).then(() => order.push('slow'))
    const quick = client.request('exec', { vm, command: 'echo quick' }).then(() => order.push('quick'))
    await Promise.all([slow, quick])
    expect(order).toEqual(['quick', 'slow'])
  })

  test('cancel kills a cancellable exec; a plain one is answered at once and left to run; drain stops what still runs', async () => {
    state = makeStateDir()
    const client = start()
    await client.hello({})
    const { vm } = await client.request('acquire')
    const id = client.nextId()
    const running = client.requestWithId(id, 'exec', { vm, command: 'echo $$ > killed.pid; exec sleep 30', cancellable: true }, undefined)
    await waitFor(() => existsSync(join(state.dir, 'fake', vm, 'home', 'killed.pid')), 'the cancellable command to start')
    const pid = Number(readFileSync(join(state.dir, 'fake', vm, 'home', 'killed.pid'), 'utf8'))
    expect(await client.request('cancel', { target: id })).toEqual({ cancelled: true, killed: true })
    expect(await failure(running)).toMatchObject({ code: 'VMPOOL_EXEC_ABORTED' })
    expect(isPidRunning(pid)).toBe(false)
    // Without cancellable (the fast path: no kill preamble) the answer comes now and the command runs on.
    const plainId = client.nextId()
    const plain = failure(client.requestWithId(plainId, 'exec', { vm, command: 'sleep 0.5; touch plain-finished' }, undefined))
    expect(await client.request('cancel', { target: plainId })).toEqual({ cancelled: true, killed: false })
    expect(await plain).toMatchObject({ code: 'VMPOOL_EXEC_ABORTED', message: expect.stringContaining('cancelled by the client') })
    await waitFor(() => existsSync(join(state.dir, 'fake', vm, 'home', 'plain-finished')), 'the abandoned command to finish on its own')
    expect(await client.request('cancel', { target: 'never-sent' })).toEqual({ cancelled: false, killed: false })
    const longer = failure(client.request('exec', { vm, command: 'sleep 30', timeoutMs: 60_000 }))
    await new Promise((resolve) => setTimeout(resolve, 300))
    const started = Date.now()
    await client.request('drain')
    expect(await longer).toMatchObject({ code: 'VMPOOL_EXEC_ABORTED' })
    expect(Date.now() - started).toBeLessThan(20_000)
    expect(fakeVms()).toEqual([])
  })

  test('putFile / getFile: every byte value through base64, and through local paths', async () => {
    state = makeStateDir()
    const client = start()
    await client.hello({})
    const { vm } = await client.request('acquire')
    const bytes = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7) % 256))
    expect(await client.request('putFile', { vm, path: 'blob.bin', data: bytes.toString('base64') })).toEqual({ size: 4096 })
    expect((await client.request('exec', { vm, command: 'wc -c < blob.bin' })).stdout.toString().trim()).toBe('4096')
    const back = await client.request<{ size: number; data: string }>('getFile', { vm, path: 'blob.bin' })
    expect(Buffer.from(back.data, 'base64').equals(bytes)).toBe(true)
    const dir = mkdtempSync(join(tmpdir(), 'vm-pool-protocol-files-'))
    try {
      writeFileSync(join(dir, 'in.bin'), bytes.subarray(0, 1000))
      expect(await client.request('putFile', { vm, path: 'from-host.bin', localPath: join(dir, 'in.bin') })).toEqual({ size: 1000 })
      expect(await client.request('getFile', { vm, path: 'from-host.bin', localPath: join(dir, 'out.bin') })).toEqual({ size: 1000 })
      expect(readFileSync(join(dir, 'out.bin')).equals(bytes.subarray(0, 1000))).toBe(true)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
    expect(await failure(client.request('getFile', { vm, path: 'missing.txt' }))).toMatchObject({ code: expect.stringMatching(/^VMPOOL_/) })
  })

  test('forwardPort: a loopback port reaches a server in the VM; closePort and release close it', async () => {
    state = makeStateDir()
    const client = start()
    await client.hello({})
    const { vm } = await client.request('acquire')
    let guestPort = 0
    const serverId = client.nextId()
    const server = client
      .requestWithId(serverId, 'exec', { vm, command: ['node', '-e', "const s=require('http').createServer((q,r)=>r.end('from the guest'));s.listen(0,'127.0.0.1',()=>console.log(s.address().port))"], stream: true, cancellable: true }, (event) => {
        if (event.event === 'stdout' && guestPort === 0) guestPort = Number(event.data.trim())
      })
      .catch((error: unknown) => error)
    try {
      await waitFor(() => guestPort > 0, 'the guest server to print its port')
      const forward = await client.request<{ forward: string; host: string; port: number }>('forwardPort', { vm, guestPort })
      expect(forward).toMatchObject({ forward: expect.any(String), host: '127.0.0.1', port: expect.any(Number) })
      expect(await get(forward.host, forward.port)).toBe('from the guest')
      await client.request('closePort', { forward: forward.forward })
      await expect(get(forward.host, forward.port)).rejects.toThrow(/ECONNREFUSED/)
      expect(await failure(client.request('closePort', { forward: forward.forward }))).toMatchObject({ message: expect.stringContaining('no open port forward') })
      const again = await client.request<{ forward: string; host: string; port: number }>('forwardPort', { vm, guestPort })
      expect(await get(again.host, again.port)).toBe('from the guest')
      await client.request('release', { vm })
      await expect(get(again.host, again.port)).rejects.toThrow(/ECONNREFUSED/)
    } finally {
      // The fake provider's "guest" server is a host process: stop it whatever happened.
      await client.request('cancel', { target: serverId }).catch(() => {})
      await server
    }
  })
})

describe('lifecycle', () => {
  test('stdin closed without a drain: the VMs are deleted and the helper exits 0', async () => {
    state = makeStateDir()
    const client = start()
    await client.hello({ keepWarm: true })
    await client.request('acquire')
    await client.request('fresh')
    expect(fakeVms()).toHaveLength(2)
    expect(await client.close()).toEqual({ code: 0, signal: null })
    // Not kept warm: a runner that leaves without draining may have left the VM in any state.
    expect(fakeVms()).toEqual([])
    expect(client.stderr).toContain('stdin closed without a drain; deleting the VMs it held')
  })

  test('the runner pid goes (stdin still open): the helper deletes the VMs and exits', async () => {
    state = makeStateDir()
    const runner = spawn('sleep', ['60'], { stdio: 'ignore' })
    await new Promise((resolve) => runner.once('spawn', resolve))
    const client = start({ args: ['--parent-pid', String(runner.pid)] })
    await client.hello({})
    await client.request('acquire')
    const running = client.request('exec', { vm: fakeVms()[0]!, command: 'sleep 30', cancellable: true }).catch((e: unknown) => e)
    runner.kill('SIGKILL')
    expect(await client.exited).toEqual({ code: 0, signal: null })
    expect(fakeVms()).toEqual([])
    expect(await running).toBeInstanceOf(Error)
    expect(client.stderr).toContain(`runner pid ${runner.pid} is gone without a drain`)
  })

  test('hello.pid names the runner to watch', async () => {
    state = makeStateDir()
    const runner = spawn('sleep', ['60'], { stdio: 'ignore' })
    await new Promise((resolve) => runner.once('spawn', resolve))
    const client = start()
    await client.hello({}, { pid: runner.pid })
    await client.request('acquire')
    runner.kill('SIGKILL')
    await client.exited
    expect(fakeVms()).toEqual([])
  })

  test('SIGKILL of the helper itself: its pool reaper deletes what the runner held', async () => {
    state = makeStateDir()
    const client = start()
    await client.hello({})
    await client.request('acquire')
    await client.request('fresh')
    expect(fakeVms()).toHaveLength(2)
    const markers = readdirSync(join(state.dir, 'reapers')).filter((name) => name.endsWith('.json'))
    expect(markers).toHaveLength(1)
    client.kill('SIGKILL')
    await client.exited
    await waitFor(() => fakeVms().length === 0, 'the reaper to delete the VMs of the killed helper')
    expect(isPidRunning(client.child.pid!)).toBe(false)
  })
})

function get(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host, port, path: '/', agent: false }, (response) => {
      let body = ''
      response.setEncoding('utf8').on('data', (chunk: string) => (body += chunk))
      response.on('end', () => resolve(body))
    })
    req.on('error', reject)
    req.end()
  })
}
