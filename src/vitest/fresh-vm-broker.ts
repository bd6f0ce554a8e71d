import { rmSync } from 'node:fs'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { z } from 'zod'
import { formatZodError } from '../config/zod-error.js'
import { VmPoolError, invalidOptions, isVmPoolError } from '../errors.js'
import type { VmRecord, VmSpec } from '../providers/vm-provider.js'
import { vmSpecSchema } from '../config/vm-spec-schema.js'
import { isPidAlive } from '../util/process-info.js'

/** What the broker does for workers; the main-process run implements it (and owns every VM). */
export interface FreshVmBrokerHandler {
  create(owner: string, spec: Omit<VmSpec, 'name'>): Promise<VmRecord>
  delete(owner: string, name: string): Promise<void>
  /** Leave the VM running: the run forgets it (no delete at the end of the test, at the worker's exit or at teardown). */
  keep(owner: string, name: string, reason?: string): Promise<void>
}

export interface FreshVmBroker {
  /** Unix socket the workers call (passed to them in `providedContext`). */
  readonly socketPath: string
  close(): Promise<void>
}

/** `<tmpdir>/vm-pool-broker-<pid>-XXXXXX/broker.sock`: the pid says whose it is, for `removeDeadBrokerDirs`. */
export const BROKER_DIR_PREFIX = 'vm-pool-broker-'

/** Request bodies are tiny JSON objects; anything bigger is not from our client. */
const MAX_BODY_BYTES = 64 * 1024

const createBody = z.object({ owner: z.string().min(1), spec: vmSpecSchema.default({}) }).strict()
/** `/fresh/delete` and `/fresh/keep`: which worker asks, about which of its VMs. */
const nameBody = z.object({ owner: z.string().min(1), name: z.string().min(1), reason: z.string().max(500).optional() }).strict()

/**
 * An HTTP server on a unix socket in a fresh 0700 temp dir: `POST /fresh` creates a VM for a worker,
 * `POST /fresh/delete` deletes it, `POST /fresh/keep` leaves it running and forgets it. VMs are created by the main process, so a worker that crashes
 * cannot leak one: the run deletes whatever a dead worker owned.
 */
export async function startFreshVmBroker(handler: FreshVmBrokerHandler): Promise<FreshVmBroker> {
  await removeDeadBrokerDirs()
  const dir = await mkdtemp(join(tmpdir(), `${BROKER_DIR_PREFIX}${process.pid}-`))
  const socketPath = join(dir, 'broker.sock')
  const server = createServer((request, response) => {
    handle(handler, request, response).catch((error: unknown) => reply(response, 500, { error: serializeError(error) }))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(socketPath, () => {
      server.off('error', reject)
      resolve()
    })
  })
  // The broker must never keep `vitest run` alive on its own.
  server.unref()
  // Ctrl-C / SIGTERM of `vitest run` skip globalSetup teardown, but the process still exits: the socket's
  // temp dir goes with it (only `exit` listeners run then, so synchronously).
  const removeDir = () => rmSync(dir, { recursive: true, force: true })
  process.once('exit', removeDir)
  return {
    socketPath,
    async close() {
      process.off('exit', removeDir)
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      await rm(dir, { recursive: true, force: true })
    },
  }
}

/** How long `removeDeadBrokerDirs` waits for an old socket to accept before calling it dead. */
const BROKER_PROBE_TIMEOUT_MS = 1_000

/**
 * Socket dirs of runs that died without teardown (SIGKILL, or a signal Vitest did not handle) are
 * removed by the next run: the dir's pid is not running (a reused pid keeps it) and nothing listens on
 * its socket (a run in another pid namespace sharing /tmp still answers).
 */
export async function removeDeadBrokerDirs(): Promise<void> {
  const names = await readdir(tmpdir()).catch(() => [] as string[])
  for (const name of names) {
    const pid = new RegExp(`^${BROKER_DIR_PREFIX}(\\d+)-`).exec(name)?.[1]
    if (pid === undefined || Number(pid) === process.pid || isPidAlive(Number(pid))) continue
    if (await isListening(join(tmpdir(), name, 'broker.sock'))) continue
    // Another user's dir in a shared /tmp is not ours to remove: ignore EPERM and the like.
    await rm(join(tmpdir(), name), { recursive: true, force: true }).catch(() => {})
  }
}

function isListening(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(socketPath)
    const done = (listening: boolean) => {
      clearTimeout(timer)
      socket.destroy()
      resolve(listening)
    }
    // No answer either way: assume someone is there.
    const timer = setTimeout(() => done(true), BROKER_PROBE_TIMEOUT_MS)
    socket.once('connect', () => done(true))
    socket.once('error', () => done(false))
  })
}

async function handle(handler: FreshVmBrokerHandler, request: IncomingMessage, response: ServerResponse): Promise<void> {
  if (request.method !== 'POST') return reply(response, 405, { error: serializeError(invalidOptions(`method ${request.method} not allowed`)) })
  const body = await readJson(request)
  if (request.url === '/fresh') {
    const parsed = createBody.safeParse(body)
    if (!parsed.success) throw invalidOptions(`invalid freshVm() spec: ${formatZodError(parsed.error, body)}`, { operation: 'freshVm' })
    const record = await handler.create(parsed.data.owner, parsed.data.spec)
    return reply(response, 200, { record })
  }
  if (request.url === '/fresh/delete' || request.url === '/fresh/keep') {
    const what = request.url === '/fresh/delete' ? 'delete' : 'keep'
    const parsed = nameBody.safeParse(body)
    if (!parsed.success) throw invalidOptions(`invalid ${what} request: ${formatZodError(parsed.error, body)}`, { operation: 'freshVm' })
    if (what === 'keep') await handler.keep(parsed.data.owner, parsed.data.name, parsed.data.reason)
    else await handler.delete(parsed.data.owner, parsed.data.name)
    return reply(response, 200, {})
  }
  return reply(response, 404, { error: serializeError(invalidOptions(`no route ${request.url}`)) })
}

async function readJson(request: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > MAX_BODY_BYTES) throw invalidOptions(`request body over ${MAX_BODY_BYTES} bytes`)
    chunks.push(chunk)
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch (error) {
    throw invalidOptions('request body is not JSON', { cause: error })
  }
}

function reply(response: ServerResponse, status: number, body: unknown): void {
  if (response.headersSent) return
  response.writeHead(status, { 'content-type': 'application/json' })
  response.end(JSON.stringify(body))
}

function serializeError(error: unknown) {
  if (isVmPoolError(error)) return error.toJSON()
  return new VmPoolError({ code: 'VMPOOL_INTERNAL', message: `freshVm broker failed: ${error instanceof Error ? error.message : String(error)}`, cause: error }).toJSON()
}
