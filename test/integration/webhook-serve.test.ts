import { randomUUID } from 'node:crypto'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { afterEach, beforeEach, describe, expect, test } from 'vitest'
import { signWebhookBody } from '../../src/cli/webhook/webhook-signature.js'
import { createWebhookService, type WebhookService } from '../../src/cli/webhook/webhook-service.js'
import type { WebhookRun } from '../../src/cli/webhook/webhook-run-queue.js'
import { countingProvider, type CountingProvider } from '../../src/providers/counting-provider.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { CommandHistory } from '../../src/workflow/history/command-history.js'
import { SessionManager } from '../../src/workflow/session-manager.js'
import { makeFixtureRepo, type FixtureRepo } from '../helpers/github-repo.js'

const SECRET = 'whsec-9f3a1c0de7b24e11-do-not-log'
/** Its one step waits (at most 60 s) until the test creates `release`: a run lasts exactly as long as a test needs. */
const slowWorkflow = (release: string) => `name: slow
on:
  push:
    branches: [slow]
jobs:
  wait:
    steps:
      - run: |
          echo "vm=$VM_POOL_VM"
          i=0; while [ ! -e '${release}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
`

let repo: FixtureRepo
let stateDir: string
let head: string
let release: string
let service: WebhookService | undefined
let history: CommandHistory | undefined
let provider: CountingProvider
let logs: string[]
let base: string

beforeEach(async () => {
  repo = await makeFixtureRepo()
  stateDir = await mkdtemp(join(tmpdir(), 'vm-pool-serve-'))
  release = join(stateDir, 'release')
  head = await repo.commit({ '.github/workflows/slow.yml': slowWorkflow(release) }, 'add slow.yml')
  logs = []
})

afterEach(async () => {
  await writeFile(release, '')
  await service?.close()
  service = undefined
  history?.close()
  history = undefined
  await repo.dispose()
  await rm(stateDir, { recursive: true, force: true })
})

async function start(options: { maxConcurrent: number; maxQueuedRuns?: number; maxBodyBytes?: number }): Promise<void> {
  provider = countingProvider(fakeProvider({ stateDir }))
  history = CommandHistory.open({ path: join(stateDir, 'history.sqlite') })
  const sessions = new SessionManager({ provider, maxConcurrentSessions: options.maxConcurrent })
  service = createWebhookService({
    secret: SECRET,
    repoDir: repo.dir,
    sessions,
    history,
    maxQueuedRuns: options.maxQueuedRuns ?? 10,
    maxBodyBytes: options.maxBodyBytes ?? 1024 * 1024,
    log: (line) => logs.push(line),
  })
  const address = await service.listen(0)
  expect(address.host).toBe('127.0.0.1')
  base = `http://127.0.0.1:${address.port}`
}

interface Delivery {
  event?: string
  delivery?: string
  body?: string | Buffer
  signature?: string | null
  contentType?: string
}

async function deliver(payload: unknown, options: Delivery = {}) {
  const body = options.body ?? JSON.stringify(payload)
  const headers: Record<string, string> = { 'content-type': options.contentType ?? 'application/json', 'x-github-event': options.event ?? 'push', 'x-github-delivery': options.delivery ?? randomUUID() }
  const signature = options.signature === undefined ? signWebhookBody(SECRET, body) : options.signature
  if (signature !== null) headers['x-hub-signature-256'] = signature
  const response = await request(`${base}/webhooks/github`, { method: 'POST', body, headers })
  return { status: response.statusCode, body: (await response.body.json()) as Record<string, unknown>, headers: response.headers }
}

async function get(path: string) {
  const response = await request(`${base}${path}`)
  return { status: response.statusCode, body: (await response.body.json()) as Record<string, unknown> }
}

const push = (ref: string, after = head) => ({ ref, after, deleted: false, repository: { full_name: 'acme/github-repo' }, sender: { login: 'octocat' } })

describe('vm-pool serve: GitHub webhooks over real HTTP', () => {
  test('a correctly signed push runs the matching workflow from the pushed commit; GET /runs and /runs/:id show it', async () => {
    await start({ maxConcurrent: 2 })
    // Uncommitted: the run reads the pushed commit, where flaky-switch still says "fail".
    await writeFile(join(repo.dir, 'flaky-switch'), 'pass\n')
    expect(await deliver({ zen: 'Design for failure.' }, { event: 'ping' })).toMatchObject({ status: 200, body: { status: 'pong' } })
    const accepted = await deliver(push('refs/heads/main'))
    expect(accepted.status).toBe(202)
    expect(accepted.body).toMatchObject({ id: '1', url: '/runs/1', workflows: ['.github/workflows/ci.yml'] })
    // A push to a branch no workflow runs on is answered and runs nothing.
    expect(await deliver(push('refs/heads/feature'))).toMatchObject({ status: 200, body: { status: 'ignored', reason: 'no workflow runs on push to refs/heads/feature' } })
    await service!.queue.idle()

    const list = await get('/runs')
    expect(list.body.runs).toEqual([expect.objectContaining({ id: '1', event: 'push', ref: 'refs/heads/main', sha: head, from: 'commit', status: 'failure', jobs: [
      { workflow: 'ci', id: 'build', result: 'success' },
      { workflow: 'ci', id: 'test', result: 'failure' },
      { workflow: 'ci', id: 'report', result: 'success' },
      { workflow: 'ci', id: 'deploy', result: 'skipped' },
    ] })])
    const run = (await get('/runs/1')).body as unknown as WebhookRun
    const build = run.results![0]!.jobs[0]!.cells[0]!
    expect(build.steps.find((step) => step.name === 'Flaky lint')).toMatchObject({ outcome: 'failure', continuedOnError: true })
    expect(build.steps.find((step) => step.name === 'Where am I')!.stdout).toContain(`vm=${build.vm}`)
    expect(provider.stats).toMatchObject({ created: 6, live: 0 })
    expect((await get('/runs/42')).status).toBe(404)
    // Every command went into the history.
    expect(history!.stepStats().find((step) => step.job === 'test' && step.step === 'Unit tests')).toMatchObject({ runs: 1, failed: 1 })
    expect(logs.join('\n')).toMatch(/POST \/webhooks\/github 202 push delivery=[0-9a-f-]{36} run=1/)
    expect(logs.join('\n')).not.toContain(SECRET)
  })

  test('wrong or missing signature, malformed JSON, wrong content type, a body over the limit, wrong methods: the right status, nothing run', async () => {
    await start({ maxConcurrent: 2, maxBodyBytes: 64 * 1024 })
    const payload = push('refs/heads/main')
    const body = JSON.stringify(payload)
    const cases: Array<[string, Delivery & { payload?: unknown }, number, RegExp]> = [
      ['missing signature', { signature: null }, 401, /missing X-Hub-Signature-256/],
      ['wrong secret', { signature: signWebhookBody('not-the-secret', body) }, 403, /does not match/],
      ['signature of another body', { signature: signWebhookBody(SECRET, `${body} `) }, 403, /does not match/],
      ['malformed signature', { signature: 'sha256=xyz' }, 403, /does not match/],
      ['malformed JSON', { body: '{"ref": "refs/heads/main",' }, 400, /not valid JSON/],
      ['not an object', { body: '[1, 2]' }, 400, /expected a JSON object/],
      ['form-encoded', { body: `payload=${encodeURIComponent(body)}`, contentType: 'application/x-www-form-urlencoded' }, 415, /application\/json/],
      ['no delivery id', { delivery: '' }, 400, /X-GitHub-Delivery/],
      ['body over the limit', { body: JSON.stringify({ ...payload, padding: 'x'.repeat(100 * 1024) }) }, 413, /larger than 65536 bytes/],
    ]
    for (const [what, options, status, error] of cases) {
      const reply = await deliver(payload, options)
      expect({ what, status: reply.status }).toEqual({ what, status })
      expect(String(reply.body.error), what).toMatch(error)
    }
    expect((await request(`${base}/webhooks/github`)).statusCode).toBe(405)
    expect((await request(`${base}/runs`, { method: 'POST', body: '{}' })).statusCode).toBe(405)
    expect((await request(`${base}/elsewhere`)).statusCode).toBe(404)
    expect((await get('/runs')).body.runs).toEqual([])
    expect(provider.stats.created).toBe(0)
    expect(await readdir(join(stateDir, 'fake')).catch(() => [])).toEqual([])
    expect(logs.join('\n')).not.toContain(SECRET)
    expect(logs.join('\n')).not.toMatch(/sha256=/)
  })

  test('a flood past the queue gets 429, a replayed delivery 409; only the accepted runs get VMs', async () => {
    await start({ maxConcurrent: 1, maxQueuedRuns: 1 })
    const deliveries = Array.from({ length: 5 }, () => randomUUID())
    const statuses: number[] = []
    for (const delivery of deliveries) statuses.push((await deliver(push('refs/heads/slow'), { delivery })).status)
    // One running (held until released), one waiting, the rest refused.
    expect(statuses).toEqual([202, 202, 429, 429, 429])
    const replay = await deliver(push('refs/heads/slow'), { delivery: deliveries[0] })
    expect(replay).toMatchObject({ status: 409, body: { error: `delivery ${deliveries[0]} was already received: ignored` } })
    expect(provider.stats.created).toBe(1)
    await writeFile(release, '')
    await service!.queue.idle()
    const runs = (await get('/runs')).body.runs as WebhookRun[]
    expect(runs.map((run) => [run.id, run.delivery, run.status])).toEqual([
      ['2', deliveries[1], 'success'],
      ['1', deliveries[0], 'success'],
    ])
    expect(provider.stats).toMatchObject({ created: 2, deleted: 2, live: 0 })
    // A refused (429) delivery may be delivered again once there is room.
    expect((await deliver(push('refs/heads/slow'), { delivery: deliveries[2] })).status).toBe(202)
    await service!.queue.idle()
    expect(provider.stats.created).toBe(3)
    expect(logs.filter((line) => / 429 /.test(line))).toHaveLength(3)
    expect(logs.join('\n')).not.toContain(SECRET)
  })
})
