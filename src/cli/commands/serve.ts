import { resolve } from 'node:path'
import { isGitRepository } from '../../workflow/github/repo-source.js'
import { loadRunsOnMapping } from '../../workflow/github/runs-on-mapping.js'
import { DEFAULT_MAX_CONCURRENT_SESSIONS } from '../../workflow/session-manager.js'
import { PROVIDER_OPTION, UsageError, getProviderName, getProviderOptions, parseCommandArgs, type CliCommand } from '../cli-command.js'
import { openHistory } from '../open-history.js'
import { openRunSessions, parseMaxConcurrent } from '../run-sessions.js'
import { DEFAULT_WEBHOOK_MAX_BODY_BYTES, DEFAULT_WEBHOOK_QUEUE, WEBHOOK_PATH, createWebhookService } from '../webhook/webhook-service.js'

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/

export const serveCommand: CliCommand = {
  name: 'serve',
  summary: 'run GitHub workflows on VMs for GitHub webhook events (push, pull_request)',
  help: `Usage: vm-pool serve --port N [--repo DIR] [--provider NAME] [--host ADDR] [--max-concurrent N]
                     [--queue N] [--max-body-bytes N] [--runners FILE]

An HTTP endpoint for GitHub webhooks. A push or pull_request event runs the workflow files of
--repo whose on: filters match it (branches, branches-ignore, tags, tags-ignore, pull_request types),
each job and matrix cell on a VM of its own, like \`vm-pool run\`. The workflow files and the checkout
come from the event's commit when --repo has it (it does not fetch), else from the working tree.

  POST ${WEBHOOK_PATH}   the webhook (content type application/json, with a secret):
      202 accepted (a run id)  200 ping, or nothing to run  401 no signature  403 wrong signature
      400 malformed  409 a delivery already received  413 body too large  415 not JSON  429 queue full
  GET  /runs              every run: status, event, ref, commit, jobs
  GET  /runs/:id          one run with its step results (the last ${4000} characters of output)

Options:
      --port N             the port (0: any free port, printed)
      --host ADDR          the address to listen on (default: 127.0.0.1). GET /runs has no
                           authentication: keep it on loopback or behind a proxy
      --repo DIR           the git repository whose .github/workflows/ run (default: .)
  -p, --provider NAME      where VMs come from (default: VM_POOL_PROVIDER, else qemu)
      --max-concurrent N   VMs at the same time, for all runs (default: ${DEFAULT_MAX_CONCURRENT_SESSIONS}); also the runs at a time
      --queue N            runs waiting for their turn; one more gets 429 (default: ${DEFAULT_WEBHOOK_QUEUE})
      --max-body-bytes N   larger bodies get 413 (default: ${DEFAULT_WEBHOOK_MAX_BODY_BYTES})
      --runners FILE       runs-on label → VM mapping (default: <repo>/.github/vm-pool.yml if present)
  -h, --help               show this help

It logs one line per request (method, path, status, event, delivery id) and per command; never a
header value, a body or the secret. Ctrl-C stops it: queued runs are cancelled, running commands
killed, always() steps run, VMs deleted.

Exit codes: 0 stopped, 1 could not listen, 2 bad usage, no secret, not a git repository.

Environment:
  VM_POOL_WEBHOOK_SECRET   the webhook's secret (required)
  VM_POOL_PROVIDER, VM_POOL_PROVIDER_OPTIONS, VM_POOL_STATE_DIR, VM_POOL_TIMEOUT_SCALE, VM_POOL_HISTORY_DB

Example:
  VM_POOL_WEBHOOK_SECRET=... vm-pool serve --port 8080 --repo ~/src/project
`,

  async run(args, io) {
    const { values } = parseCommandArgs(
      args,
      {
        ...PROVIDER_OPTION,
        port: { type: 'string' },
        host: { type: 'string' },
        repo: { type: 'string' },
        'max-concurrent': { type: 'string' },
        queue: { type: 'string' },
        'max-body-bytes': { type: 'string' },
        runners: { type: 'string' },
      },
      false,
    )
    if (values.port === undefined) throw new UsageError('missing --port N (0 picks a free port)')
    const port = wholeNumber('--port', values.port, 0, 65_535)
    const queue = values.queue === undefined ? DEFAULT_WEBHOOK_QUEUE : wholeNumber('--queue', values.queue, 0, 1_000_000)
    const maxBodyBytes = values['max-body-bytes'] === undefined ? DEFAULT_WEBHOOK_MAX_BODY_BYTES : wholeNumber('--max-body-bytes', values['max-body-bytes'], 1, 2 ** 31)
    const maxConcurrent = parseMaxConcurrent(values['max-concurrent'])
    const host = values.host ?? '127.0.0.1'
    const secret = io.env.VM_POOL_WEBHOOK_SECRET
    if (!secret) throw new UsageError('VM_POOL_WEBHOOK_SECRET is not set: set it to the secret configured on the GitHub webhook')
    const repoDir = resolve(values.repo ?? '.')
    if (!(await isGitRepository(repoDir))) throw new UsageError(`--repo ${repoDir} is not a git repository`)
    const runsOn = await loadRunsOnMapping(values.runners, repoDir)

    const { sessions, close } = await openRunSessions(getProviderName(values.provider, io.env), getProviderOptions(io.env), maxConcurrent)
    const history = openHistory(io)
    const log = (line: string) => io.stdout.write(`${new Date().toISOString()} ${line}\n`)
    const service = createWebhookService({ secret, repoDir, sessions, runsOn, maxBodyBytes, maxQueuedRuns: queue, history, log })
    try {
      let address: { host: string; port: number }
      try {
        address = await service.listen(port, host)
      } catch (error) {
        io.stderr.write(`vm-pool serve: cannot listen on ${host}:${port}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}\n`)
        return 1
      }
      const url = `http://${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}`
      io.stdout.write(`vm-pool serve: listening on ${url}${WEBHOOK_PATH} (repo ${repoDir}, provider ${sessions.provider.name}, ${maxConcurrent} VM(s) at a time, queue ${queue})\n`)
      if (!LOOPBACK.test(host)) io.stderr.write(`vm-pool serve: warning: ${host} is not a loopback address; GET /runs has no authentication\n`)
      if (!io.signal.aborted) await new Promise((resolveAbort) => io.signal.addEventListener('abort', resolveAbort, { once: true }))
      io.stdout.write('vm-pool serve: stopping: queued runs cancelled, running commands killed, VMs deleted\n')
      return 0
    } finally {
      await service.close()
      history?.close()
      await close()
    }
  },
}

function wholeNumber(option: string, raw: string, min: number, max: number): number {
  const value = Number(raw)
  if (!/^\d+$/.test(raw) || value < min || value > max) throw new UsageError(`${option} must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`)
  return value
}
