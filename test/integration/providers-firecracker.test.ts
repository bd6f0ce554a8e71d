/**
 * firecrackerProvider against the fcctl-web stand-in (a real HTTP server on 127.0.0.1:0): the token
 * never leaks, 5xx and connection errors are retried with backoff, 4xx never are, 404 on delete is "gone".
 */
import { execFile, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { inspect, promisify } from 'node:util'
import { Agent, type Dispatcher } from 'undici'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { startFirecrackerServer, type StartedFirecrackerServer } from '../../fixtures/firecracker-server.js'
import { isVmPoolError } from '../../src/errors.js'
import { FIRECRACKER_EXEC_ANSWER_GRACE_MS, firecrackerProvider } from '../../src/providers/firecracker-provider.js'
import { scaleTimeout } from '../../src/util/timeouts.js'
import { getFreePort } from '../helpers/sshd.js'

const token = `secret-${randomBytes(24).toString('hex')}`
let server: StartedFirecrackerServer
beforeAll(async () => {
  server = await startFirecrackerServer({ token, bootDelayMs: 100 })
})
afterAll(async () => server?.close())
afterEach(() => {
  server.requests.length = 0
  server.clearFaults()
})

/** Everything a user could see of an error: message, stack, JSON, inspect, and its causes. */
function everything(error: unknown): string {
  return [String(error), (error as Error).stack, JSON.stringify(error), inspect(error, { depth: 10 })].join('\n')
}

describe('firecracker provider against the fixture API', () => {
  test('the bearer token goes with every call and never appears in the provider, records or lists', async () => {
    const provider = firecrackerProvider({ url: server.url, token })
    const record = await provider.create({ name: 'fc-token-check' })
    const vm = await provider.connect(record)
    expect((await vm.exec('echo hi')).stdout).toBe('hi\n')
    const listed = await provider.list()
    await provider.delete('fc-token-check')
    expect(server.requests.length).toBeGreaterThan(4)
    expect(server.requests.every((request) => request.auth === 'ok')).toBe(true)
    for (const visible of [JSON.stringify(provider), inspect(provider, { depth: 10, showHidden: true }), JSON.stringify(record), JSON.stringify(listed), inspect(vm, { depth: 10, showHidden: true })]) {
      expect(visible).not.toContain(token)
    }
    expect(server.requests.map((request) => `${request.method} ${request.path.replace(/vm-[0-9a-f]+/, 'ID')}`)).toEqual(
      expect.arrayContaining(['POST /api/vms', 'GET /api/vms/ID', 'POST /api/llm/execute', 'GET /api/vms', 'DELETE /api/vms/ID']),
    )
    const create = server.requests.find((request) => request.method === 'POST' && request.path === '/api/vms')
    expect(create?.body).toEqual({ vm_type: 'bionic-test', vm_name: 'fc-token-check' })
    const execute = server.requests.find((request) => request.path === '/api/llm/execute' && String(JSON.stringify(request.body)).includes('echo hi'))
    expect(execute?.body).toMatchObject({ agent_id: 'vm-pool', language: 'bash', vm_id: record.data.id })
  })

  test('a rejected token is VMPOOL_AUTH_FAILED, without the token anywhere (the server echoes it back)', async () => {
    const wrong = `wrong-${randomBytes(24).toString('hex')}`
    const provider = firecrackerProvider({ url: server.url, token: wrong })
    for (const attempt of [() => provider.create({ name: 'fc-auth' }), () => provider.list(), () => provider.delete('fc-auth')]) {
      const error = await attempt().then(() => undefined, (e: unknown) => e)
      expect(isVmPoolError(error, 'VMPOOL_AUTH_FAILED')).toBe(true)
      expect(everything(error)).not.toContain(wrong)
      expect(everything(error)).not.toContain(token)
    }
    // The server did answer with the token in its body: proof the client chose not to repeat it.
    expect(server.requests.filter((request) => request.status === 401).length).toBe(3)
    const probe = await provider.probe!()
    expect(probe.usable).toBe(false)
    expect(JSON.stringify(probe)).not.toContain(wrong)
  })

  test('503 twice, then success: retried with backoff', async () => {
    const provider = firecrackerProvider({ url: server.url, token })
    server.injectFault({ status: 503, times: 2, method: 'POST', path: '/api/vms' })
    const record = await provider.create({ name: 'fc-flaky' })
    const creates = server.requests.filter((request) => request.method === 'POST' && request.path === '/api/vms')
    expect(creates.map((request) => request.status)).toEqual([503, 503, 201])
    server.injectFault({ status: 500, times: 2, method: 'GET', path: '/api/vms' })
    expect((await provider.list()).map((info) => info.name)).toContain('fc-flaky')
    await provider.delete(record.name)
  })

  test('4xx is never retried', async () => {
    const provider = firecrackerProvider({ url: server.url, token })
    server.injectFault({ status: 400, times: 5, method: 'GET', path: '/api/vms' })
    const error = await provider.list().then(() => undefined, (e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_HTTP_ERROR')).toBe(true)
    expect((error as { details?: { status?: number } }).details?.status).toBe(400)
    expect(server.requests.filter((request) => request.path === '/api/vms')).toHaveLength(1)
  })

  test('a 500 on execute is not retried (the command may have run), a 503 is', async () => {
    const provider = firecrackerProvider({ url: server.url, token })
    const vm = await provider.connect(await provider.create({ name: 'fc-exec-retry' }))
    server.requests.length = 0
    server.injectFault({ status: 500, times: 1, path: '/api/llm/execute' })
    await expect(vm.exec('echo once')).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_HTTP_ERROR'))
    expect(server.requests.filter((request) => request.path === '/api/llm/execute')).toHaveLength(1)
    server.injectFault({ status: 503, times: 1, path: '/api/llm/execute' })
    expect((await vm.exec('echo again')).stdout).toBe('again\n')
    await provider.delete('fc-exec-retry')
  })

  test('dropped connections are retried; a server that is not there is VMPOOL_PROVIDER_UNAVAILABLE after the retries', async () => {
    const provider = firecrackerProvider({ url: server.url, token })
    server.injectFault({ status: 0, times: 1, method: 'GET', path: '/api/vms', dropConnection: true })
    await expect(provider.list()).resolves.toBeInstanceOf(Array)
    const nowhere = firecrackerProvider({ url: `http://127.0.0.1:${await getFreePort()}`, token })
    const error = await nowhere.list().then(() => undefined, (e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_PROVIDER_UNAVAILABLE')).toBe(true)
    expect(String(error)).toMatch(/ECONNREFUSED.*after 3 retries/)
    expect(everything(error)).not.toContain(token)
  })

  test('deleting a VM that is gone succeeds: unknown name, and a 404 from DELETE', async () => {
    const provider = firecrackerProvider({ url: server.url, token })
    await provider.delete('fc-never-created')
    const record = await provider.create({ name: 'fc-gone' })
    server.injectFault({ status: 404, times: 1, method: 'DELETE' })
    await provider.delete('fc-gone')
    expect(server.requests.filter((request) => request.method === 'DELETE').map((request) => request.status)).toEqual([404])
    await provider.delete('fc-gone')
    await expect(provider.connect(record)).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_VM_NOT_FOUND'))
  })

  test('a 200 that is not JSON (a proxy page) is VMPOOL_HTTP_ERROR, not a raw SyntaxError', async () => {
    const provider = firecrackerProvider({ url: server.url, token })
    const record = await provider.create({ name: 'fc-not-json' })
    server.injectFault({ status: 200, times: 1, method: 'GET', path: '/api/vms/', text: '<html>captive portal</html>' })
    const error = await provider.connect(record).then(() => undefined, (e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_HTTP_ERROR')).toBe(true)
    expect(String(error)).toMatch(/GET \/api\/vms\/\S+ answered HTTP 200 with something that is not JSON: <html>captive portal/)
    await provider.delete(record.name)
  })

  test('bad names are refused before any request is made', async () => {
    const provider = firecrackerProvider({ url: server.url, token })
    await expect(provider.create({ name: "x'; DROP TABLE vms; --" })).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_NAME'))
    await expect(provider.delete('$(reboot)')).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_NAME'))
    expect(server.requests).toHaveLength(0)
  })

  test('url and token from FIRECRACKER_API_URL / FIRECRACKER_AUTH_TOKEN; an injected dispatcher carries every call', async () => {
    const saved = { url: process.env.FIRECRACKER_API_URL, token: process.env.FIRECRACKER_AUTH_TOKEN }
    process.env.FIRECRACKER_API_URL = server.url
    process.env.FIRECRACKER_AUTH_TOKEN = token
    let dispatched = 0
    class CountingAgent extends Agent {
      override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
        dispatched++
        return super.dispatch(options, handler)
      }
    }
    const dispatcher = new CountingAgent()
    try {
      const provider = firecrackerProvider({ dispatcher })
      expect(await provider.probe!()).toMatchObject({ usable: true })
      expect(await provider.list()).toBeInstanceOf(Array)
      expect(dispatched).toBe(2)
      expect(server.requests.every((request) => request.auth === 'ok')).toBe(true)
    } finally {
      process.env.FIRECRACKER_API_URL = saved.url
      process.env.FIRECRACKER_AUTH_TOKEN = saved.token
      if (saved.url === undefined) delete process.env.FIRECRACKER_API_URL
      if (saved.token === undefined) delete process.env.FIRECRACKER_AUTH_TOKEN
      await dispatcher.close()
    }
  })

  test('no token at all: calls fail as invalid options, probe says how to fix it', async () => {
    const saved = process.env.FIRECRACKER_AUTH_TOKEN
    delete process.env.FIRECRACKER_AUTH_TOKEN
    try {
      const provider = firecrackerProvider({ url: server.url })
      await expect(provider.list()).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS'))
      expect(await provider.probe!()).toMatchObject({ usable: false, hint: expect.stringContaining('FIRECRACKER_AUTH_TOKEN') })
      expect(server.requests).toHaveLength(0)
    } finally {
      if (saved !== undefined) process.env.FIRECRACKER_AUTH_TOKEN = saved
    }
  })

  test('a server-side timeout is reported as timedOut with exit 124', async () => {
    const provider = firecrackerProvider({ url: server.url, token })
    const vm = await provider.connect(await provider.create({ name: 'fc-timeout' }))
    const result = await vm.exec('sleep 20', { timeoutMs: 300 })
    expect(result).toMatchObject({ timedOut: true, exitCode: 124 })
    const sent = server.requests.find((request) => String(JSON.stringify(request.body)).includes('sleep 20'))
    expect(sent?.body).toMatchObject({ timeout_seconds: 3 })
    expect((await vm.exec('echo ok')).stdout).toBe('ok\n')
    await provider.delete('fc-timeout')
  })

  test('describe: curl lines for that VM by id that work; the delete removes it and no other; the token is named, never shown', async () => {
    const provider = firecrackerProvider({ url: server.url, token })
    const kept = await provider.create({ name: 'fc-kept-a' })
    const other = await provider.create({ name: 'fc-kept-b' })
    try {
      const help = provider.describe!(kept)
      expect(JSON.stringify(help)).not.toContain(token)
      const env = { ...process.env, FIRECRACKER_AUTH_TOKEN: token }
      // Run what a person would paste (the reach line ends with a note in parentheses). Not execFileSync:
      // the fixture server answers from this process's event loop.
      const sh = (line: string) => promisify(execFile)('sh', ['-c', line], { env, encoding: 'utf8', timeout: 30_000 })
      const answer = JSON.parse((await sh(help.reach.replace(/ {3}\(.*\)$/, ''))).stdout)
      expect(answer).toMatchObject({ exit_code: 0, stdout: expect.stringContaining('Linux') })
      await sh(help.remove)
      expect(server.vmIds()).not.toContain(kept.data.id)
      expect(server.vmIds()).toContain(other.data.id)
    } finally {
      await provider.delete('fc-kept-a')
      await provider.delete('fc-kept-b')
    }
  })

  test('a token in an error body is redacted BEFORE the body is cut: no piece of it leaks (list and exec)', async () => {
    const provider = firecrackerProvider({ url: server.url, token })
    const vm = await provider.connect(await provider.create({ name: 'fc-redact' }))
    // 50 of the token's characters before the cut (300 for an error body, 200 for a body that is not JSON).
    const across = (cut: number) => `${'x'.repeat(cut - 50)}${token} and more text after it`
    const cases: Array<[string, () => Promise<unknown>]> = [
      ['list, HTTP 400', () => (server.injectFault({ status: 400, times: 1, method: 'GET', path: '/api/vms', text: across(300) }), provider.list())],
      ['list, not JSON', () => (server.injectFault({ status: 200, times: 1, method: 'GET', path: '/api/vms', text: across(200) }), provider.list())],
      ['list, not JSON, token first', () => (server.injectFault({ status: 200, times: 1, method: 'GET', path: '/api/vms', text: `${token} is not JSON` }), provider.list())],
      ['exec, HTTP 400', () => (server.injectFault({ status: 400, times: 1, method: 'POST', path: '/api/llm/execute', text: across(300) }), vm.exec('echo hi'))],
    ]
    try {
      for (const [label, attempt] of cases) {
        const error = await attempt().then(() => undefined, (e: unknown) => e)
        expect(isVmPoolError(error, 'VMPOOL_HTTP_ERROR'), label).toBe(true)
        const visible = everything(error)
        // Any 8 characters in a row of the token count as a leak.
        const leaked = Array.from({ length: token.length - 7 }, (_, i) => token.slice(i, i + 8)).filter((piece) => visible.includes(piece))
        expect(leaked, label).toEqual([])
        expect(String(error), label).toContain('[redacted]')
      }
    } finally {
      await provider.delete('fc-redact')
    }
  })

  test('a detached child holding the output does not outlive timeoutMs: exec stops waiting after FIRECRACKER_EXEC_ANSWER_GRACE_MS', async () => {
    const provider = firecrackerProvider({ url: server.url, token })
    const vm = await provider.connect(await provider.create({ name: 'fc-detached' }))
    // A sleep time no other process uses, to find (and end) this test's detached sleep by its pid.
    const tag = `25.${randomBytes(3).readUIntBE(0, 3)}`
    try {
      // `setsid` moves the sleep out of every process group a kill reaches; it keeps the server's pipe open.
      const result = await vm.exec(`setsid sleep ${tag} & echo started`, { timeoutMs: 500 })
      expect(result).toMatchObject({ timedOut: true, exitCode: 124 })
      // timeout_seconds (1 s + 2 s grace) plus the answer grace; without it: a VMPOOL_HTTP_ERROR after 30 s more.
      expect(result.durationMs).toBeLessThan(3_000 + scaleTimeout(FIRECRACKER_EXEC_ANSWER_GRACE_MS) + 5_000)
    } finally {
      for (const pid of spawnSync('pgrep', ['-f', `^sleep ${tag}$`], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean)) process.kill(Number(pid), 'SIGKILL')
      await provider.delete('fc-detached')
    }
  }, 60_000)
})
