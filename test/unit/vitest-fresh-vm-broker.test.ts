/**
 * The freshVm broker: its routes, reached by the worker's client over the real unix socket; and its
 * socket dir (`<tmpdir>/vm-pool-broker-<pid>-XXXXXX`), which never outlives its run: removed on close,
 * on process exit without teardown, and — after a SIGKILL — by the next run.
 */
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { afterEach, beforeAll, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { BrokerClient } from '../../src/vitest/broker-client.js'
import { BROKER_DIR_PREFIX, startFreshVmBroker } from '../../src/vitest/fresh-vm-broker.js'
import { ensureDistBuilt, REPO_DIR } from '../../fixtures/pool/harness.js'

const handler = { create: async () => Promise.reject(new Error('unused')), delete: async () => {}, keep: async () => {} }
const made: string[] = []
const cleanups: (() => void)[] = []
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup()
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true })
})

function makeDir(pid: number, tag: string): string {
  const dir = join(tmpdir(), `${BROKER_DIR_PREFIX}${pid}-test${tag}`)
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, 'leftover'), '')
  made.push(dir)
  return dir
}

test('its dir carries the pid and goes on close', async () => {
  const broker = await startFreshVmBroker(handler)
  expect(basename(dirname(broker.socketPath))).toMatch(new RegExp(`^${BROKER_DIR_PREFIX}${process.pid}-`))
  expect(existsSync(broker.socketPath)).toBe(true)
  await broker.close()
  expect(existsSync(dirname(broker.socketPath))).toBe(false)
})

test('the worker client reaches create, delete and keep with its worker id; a bad request is refused naming the field', async () => {
  const calls: string[] = []
  const record = { name: 'vitest-fresh-abc-1', provider: 'fake', createdAt: new Date(0).toISOString(), spec: { name: 'vitest-fresh-abc-1' }, data: {} }
  const broker = await startFreshVmBroker({
    create: async (owner, spec) => (calls.push(`create ${owner} ${JSON.stringify(spec)}`), record),
    delete: async (owner, name) => void calls.push(`delete ${owner} ${name}`),
    keep: async (owner, name) => void calls.push(`keep ${owner} ${name}`),
  })
  const client = new BrokerClient(broker.socketPath, 'w7')
  try {
    expect(await client.create({ cpus: 2 })).toEqual(record)
    await client.keep('vitest-fresh-abc-1')
    await client.delete('vitest-fresh-abc-2')
    expect(calls).toEqual(['create w7 {"cpus":2}', 'keep w7 vitest-fresh-abc-1', 'delete w7 vitest-fresh-abc-2'])
    const refused = await client.keep('').catch((error: unknown) => error)
    expect(isVmPoolError(refused, 'VMPOOL_INVALID_OPTIONS')).toBe(true)
    expect((refused as Error).message).toMatch(/invalid keep request: name/)
    expect(calls).toHaveLength(3)
  } finally {
    await client.close()
    await broker.close()
  }
})

test('a new broker removes dirs of dead runs, not of live ones (running pid, or a socket that answers)', async () => {
  const deadPid = spawnSync('true').pid!
  const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' })
  cleanups.push(() => sleeper.kill('SIGKILL'))
  const dead = makeDir(deadPid, 'a')
  const live = makeDir(sleeper.pid!, 'b')
  // A dead pid in our namespace, but its socket still answers (a run in another pid namespace sharing /tmp).
  const answering = makeDir(deadPid, 'c')
  const server: Server = createServer()
  await new Promise<void>((resolve) => server.listen(join(answering, 'broker.sock'), resolve))
  cleanups.push(() => server.close())

  const broker = await startFreshVmBroker(handler)
  try {
    expect(existsSync(dead)).toBe(false)
    expect(existsSync(live)).toBe(true)
    expect(existsSync(answering)).toBe(true)
  } finally {
    await broker.close()
  }
})

test('a process that exits without closing the broker (Ctrl-C skips teardown) leaves no dir', { timeout: 120_000 }, async () => {
  await ensureDistBuilt()
  const script = `import { startFreshVmBroker } from ${JSON.stringify(join(REPO_DIR, 'dist/vitest/fresh-vm-broker.js'))}
const broker = await startFreshVmBroker({ create: async () => ({}), delete: async () => {} })
console.log(broker.socketPath)
process.exit(0)`
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } })
  expect(child.status, child.stderr).toBe(0)
  const socketPath = child.stdout.trim()
  expect(socketPath).toMatch(/broker\.sock$/)
  expect(existsSync(dirname(socketPath))).toBe(false)
})
