import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { basename } from 'node:path'
import type { ExpressionValue } from '../../workflow/github/expression-parser.js'
import { findWorkflowsForEvent } from '../../workflow/github/event-workflows.js'
import { webhookTrigger, type GithubTrigger } from '../../workflow/github/github-context.js'
import type { GithubWorkflow } from '../../workflow/github/github-workflow-schema.js'
import type { RepoSource } from '../../workflow/github/repo-source.js'
import type { RunsOnMapping } from '../../workflow/github/runs-on-mapping.js'
import { runGithubWorkflow, type GithubWorkflowResult } from '../../workflow/github/run-github-workflow.js'
import type { CommandHistory } from '../../workflow/history/command-history.js'
import { createHistoryRecorder } from '../../workflow/history/history-recorder.js'
import type { SessionManager } from '../../workflow/session-manager.js'
import { formatEvent } from '../run-output.js'
import { checkWebhookSignature } from './webhook-signature.js'
import { WebhookRunQueue, type WebhookRun } from './webhook-run-queue.js'

/**
 * `vm-pool serve`: GitHub webhooks at `POST /webhooks/github` turned into runs of the repository's
 * workflow files, and `GET /runs`, `GET /runs/:id` to follow them. The order of checks matters: the
 * body is bounded before it is read, the signature is checked before anything else looks at it, and
 * a delivery id is remembered only once its request was accepted (so GitHub may redeliver a failed one).
 * Logs carry the method, path, status, event and delivery id — never a header value, the body or the secret.
 */

export const WEBHOOK_PATH = '/webhooks/github'
/** Larger bodies get 413 (GitHub caps payloads at 25 MB; push payloads are usually far smaller). */
export const DEFAULT_WEBHOOK_MAX_BODY_BYTES = 5 * 1024 * 1024
/** Runs waiting for a slot; one more gets 429. */
export const DEFAULT_WEBHOOK_QUEUE = 10
/** Delivery ids remembered to ignore a replay. */
export const MAX_REMEMBERED_DELIVERIES = 10_000
/** A request (headers and body) must arrive within this long. */
export const WEBHOOK_REQUEST_TIMEOUT_MS = 30_000
/** Step output kept per stream in `GET /runs/:id`. */
const OUTPUT_TAIL_CHARS = 4_000
// Past this many bytes of an over-limit body we stop draining it and drop the connection.
const DRAIN_FACTOR = 4

export interface WebhookServiceOptions {
  /** The webhook's secret (from VM_POOL_WEBHOOK_SECRET). */
  secret: string
  /** The repository whose `.github/workflows/` run. */
  repoDir: string
  sessions: SessionManager
  runsOn?: RunsOnMapping
  /** @default DEFAULT_WEBHOOK_MAX_BODY_BYTES */
  maxBodyBytes?: number
  /** @default DEFAULT_WEBHOOK_QUEUE */
  maxQueuedRuns?: number
  /** @default the session limit */
  maxActiveRuns?: number
  history?: CommandHistory
  /** One line per request and per command; never secrets. */
  log?: (line: string) => void
}

export interface WebhookService {
  readonly server: Server
  readonly queue: WebhookRunQueue
  listen(port: number, host?: string): Promise<{ host: string; port: number }>
  /** Stop accepting, cancel queued runs, abort running ones (always() steps run, VMs are released). */
  close(): Promise<void>
}

interface RunWork {
  workflows: GithubWorkflow[]
  repo: RepoSource
  trigger: GithubTrigger
}

interface Reply {
  status: number
  body: Record<string, unknown>
  headers?: Record<string, string>
  /** Added to the log line. */
  note?: string
}

export function createWebhookService(options: WebhookServiceOptions): WebhookService {
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_WEBHOOK_MAX_BODY_BYTES
  const log = options.log ?? (() => {})
  const queue = new WebhookRunQueue({ maxActive: options.maxActiveRuns ?? options.sessions.maxConcurrentSessions, maxQueued: options.maxQueuedRuns ?? DEFAULT_WEBHOOK_QUEUE })
  const deliveries = new Set<string>()
  const record = createHistoryRecorder(options.history, log)

  const remember = (delivery: string) => {
    deliveries.add(delivery)
    if (deliveries.size > MAX_REMEMBERED_DELIVERIES) deliveries.delete(deliveries.values().next().value!)
  }

  const execute = async (run: WebhookRun, signal: AbortSignal, work: RunWork): Promise<GithubWorkflowResult[]> => {
    const results = await Promise.all(
      work.workflows.map((workflow) =>
        runGithubWorkflow(workflow, {
          sessions: options.sessions,
          repo: work.repo,
          trigger: work.trigger,
          ...(options.runsOn ? { runsOn: options.runsOn } : {}),
          signal,
          onEvent: (event) => {
            const tag = `[run ${run.id}] [${workflow.name} / ${event.workflow}]`
            if (event.type === 'job-skipped' || event.type === 'cell-no-vm') log(`${tag} ${event.type === 'job-skipped' ? 'skipped' : 'no VM'}: ${event.reason}`)
            else log(formatEvent(tag, event, event.type === 'command-end' ? record(workflow.name, event.workflow, event.result) : undefined).trimEnd())
          },
        }),
      ),
    )
    log(`[run ${run.id}] finished: ${results.map((result) => `${result.name} ${result.status}`).join(', ')}`)
    return results
  }

  const accept = async (event: string, delivery: string, body: Buffer, contentType: string | undefined): Promise<Reply> => {
    if (!/^application\/json\b/i.test(contentType ?? '')) return { status: 415, body: { error: 'expected Content-Type: application/json (set the webhook content type to application/json)' } }
    let payload: unknown
    try {
      payload = JSON.parse(body.toString('utf8'))
    } catch {
      // V8's message quotes part of the body: not echoed.
      return { status: 400, body: { error: 'the body is not valid JSON' } }
    }
    if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) return { status: 400, body: { error: 'expected a JSON object' } }
    const data = payload as { [key: string]: ExpressionValue }
    if (event === 'ping') return { status: 200, body: { status: 'pong' } }
    if (event !== 'push' && event !== 'pull_request') return { status: 200, body: { status: 'ignored', reason: `event ${event} is not handled (push and pull_request are)` } }
    if (event === 'push' && data.deleted === true) return { status: 200, body: { status: 'ignored', reason: 'a deleted branch or tag runs nothing' } }
    const trigger = webhookTrigger(event, data, basename(options.repoDir))
    const found = await findWorkflowsForEvent(options.repoDir, { name: event, ...(trigger.ref ? { ref: trigger.ref } : {}), ...(trigger.baseRef ? { baseRef: trigger.baseRef } : {}), ...(typeof data.action === 'string' ? { action: data.action } : {}) }, trigger.sha)
    const notes = found.invalid.map((file) => `${file.path} was not run: ${file.message}`)
    if (trigger.sha !== undefined && found.from === 'working-tree') notes.push(`commit ${trigger.sha} is not in ${options.repoDir}: the working tree's tracked files were used`)
    const what = `${event}${trigger.ref ? ` to ${trigger.ref}` : ''}`
    if (found.workflows.length === 0) return { status: 200, body: { status: 'ignored', reason: `no workflow runs on ${what}`, notes } }
    const run = queue.submit(
      {
        delivery,
        event,
        ...(trigger.ref ? { ref: trigger.ref } : {}),
        ...(trigger.sha ? { sha: trigger.sha } : {}),
        from: found.from,
        workflows: found.workflows.map((workflow) => workflow.source ?? workflow.name),
        notes,
      },
      (queued, signal) => execute(queued, signal, { workflows: found.workflows, repo: found.source, trigger }),
    )
    if (!run) return { status: 429, body: { error: `the run queue is full (${queue.activeCount} running, ${queue.queuedCount} waiting): try again later` }, headers: { 'Retry-After': '60' } }
    return { status: 202, body: { id: run.id, status: run.status, url: `/runs/${run.id}`, workflows: run.workflows, notes }, note: `run=${run.id}` }
  }

  const handleWebhook = async (req: IncomingMessage): Promise<Reply & { event?: string; delivery?: string }> => {
    const declared = Number(req.headers['content-length'])
    const body = await readBody(req, maxBodyBytes, Number.isFinite(declared) ? declared : undefined)
    if (body === undefined) return { status: 413, body: { error: `the body is larger than ${maxBodyBytes} bytes` }, headers: { Connection: 'close' } }
    const signature = checkWebhookSignature(options.secret, body, req.headers['x-hub-signature-256'])
    if (signature === 'missing') return { status: 401, body: { error: 'missing X-Hub-Signature-256: configure the webhook with a secret' } }
    if (signature === 'invalid') return { status: 403, body: { error: 'X-Hub-Signature-256 does not match: check the secret' } }
    const event = singleHeader(req.headers['x-github-event'])
    const delivery = singleHeader(req.headers['x-github-delivery'])
    if (!event || !/^[a-z_]{1,64}$/.test(event)) return { status: 400, body: { error: 'missing or invalid X-GitHub-Event' } }
    if (!delivery || !/^[A-Za-z0-9._-]{1,128}$/.test(delivery)) return { status: 400, body: { error: 'missing or invalid X-GitHub-Delivery' }, event }
    if (deliveries.has(delivery)) return { status: 409, body: { error: `delivery ${delivery} was already received: ignored` }, event, delivery }
    // Taken now so that a concurrent replay is refused too; given back unless the request succeeds.
    remember(delivery)
    let reply: Reply
    try {
      reply = await accept(event, delivery, body, singleHeader(req.headers['content-type']))
    } catch (error) {
      deliveries.delete(delivery)
      throw error
    }
    if (reply.status >= 300) deliveries.delete(delivery)
    return { ...reply, event, delivery }
  }

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname
    let reply: Reply & { event?: string; delivery?: string }
    try {
      if (path === WEBHOOK_PATH) reply = req.method === 'POST' ? await handleWebhook(req) : { status: 405, body: { error: 'use POST' }, headers: { Allow: 'POST' } }
      else if (path === '/runs' || path.startsWith('/runs/')) reply = req.method === 'GET' ? getRuns(path, queue) : { status: 405, body: { error: 'use GET' }, headers: { Allow: 'GET' } }
      else reply = { status: 404, body: { error: `no such path: ${WEBHOOK_PATH}, /runs and /runs/:id exist` } }
    } catch (error) {
      log(`internal error: ${(error as Error)?.message ?? String(error)}`)
      reply = { status: 500, body: { error: 'internal error (see the server log)' } }
    }
    if (!req.complete) req.resume()
    res.writeHead(reply.status, { 'Content-Type': 'application/json', ...reply.headers })
    res.end(`${JSON.stringify(reply.body)}\n`)
    const what = [reply.event, reply.delivery ? `delivery=${reply.delivery}` : undefined, reply.note].filter(Boolean).join(' ')
    if (path === WEBHOOK_PATH) log(`${req.method} ${WEBHOOK_PATH} ${reply.status}${what ? ` ${what}` : ''}`)
  }

  const server = createServer((req, res) => void handle(req, res))
  server.requestTimeout = WEBHOOK_REQUEST_TIMEOUT_MS
  server.headersTimeout = WEBHOOK_REQUEST_TIMEOUT_MS

  return {
    server,
    queue,
    listen(port, host = '127.0.0.1') {
      return new Promise((resolve, reject) => {
        server.once('error', reject)
        server.listen(port, host, () => {
          server.off('error', reject)
          const address = server.address() as AddressInfo
          resolve({ host: address.address, port: address.port })
        })
      })
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()))
      server.closeIdleConnections()
      await queue.close()
      server.closeAllConnections()
      await closed
    },
  }
}

function singleHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value
}

/**
 * The body, or undefined when it is over `max` bytes. An over-limit body is drained (not kept) so the
 * client can read the 413; past DRAIN_FACTOR × max the connection is dropped instead.
 */
function readBody(req: IncomingMessage, max: number, declared: number | undefined): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    if (declared !== undefined && declared > max * DRAIN_FACTOR) {
      req.socket.destroy()
      resolve(undefined)
      return
    }
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size <= max) chunks.push(chunk)
      else if (size > max * DRAIN_FACTOR) req.socket.destroy()
    })
    req.on('end', () => resolve(size > max ? undefined : Buffer.concat(chunks)))
    req.on('close', () => resolve(size > max || !req.complete ? undefined : Buffer.concat(chunks)))
  })
}

function getRuns(path: string, queue: WebhookRunQueue): Reply {
  if (path === '/runs' || path === '/runs/') return { status: 200, body: { runs: queue.list().map(({ results, ...summary }) => ({ ...summary, jobs: results?.flatMap((result) => result.jobs.map((job) => ({ workflow: result.name, id: job.id, result: job.result }))) ?? [] })) } }
  const id = decodeURIComponent(path.slice('/runs/'.length))
  const run = queue.get(id)
  if (!run) return { status: 404, body: { error: `no run ${id}` } }
  return { status: 200, body: { ...run, results: run.results?.map(trimOutput) } }
}

function trimOutput(result: GithubWorkflowResult): GithubWorkflowResult {
  const tail = (text: string) => (text.length > OUTPUT_TAIL_CHARS ? `…${text.slice(-OUTPUT_TAIL_CHARS)}` : text)
  return { ...result, jobs: result.jobs.map((job) => ({ ...job, cells: job.cells.map((cell) => ({ ...cell, steps: cell.steps.map((step) => ({ ...step, stdout: tail(step.stdout), stderr: tail(step.stderr) })) })) })) }
}
