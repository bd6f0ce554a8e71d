import type { Agent } from 'undici'
import { VmPoolError, type SerializedVmPoolError } from '../errors.js'
import type { VmRecord, VmSpec } from '../providers/vm-provider.js'
import { lazyModule } from '../util/lazy-module.js'
import { scaleTimeout } from '../util/timeouts.js'

const undici = lazyModule<typeof import('undici')>('undici')

/** A fresh VM boots while the test waits: allow for a slow cold boot under TCG. */
export const FRESH_VM_CREATE_TIMEOUT_MS = 180_000
export const FRESH_VM_DELETE_TIMEOUT_MS = 60_000
/** `keep()` only rewrites the VM's lease: no VM operation. */
export const FRESH_VM_KEEP_TIMEOUT_MS = 30_000

/** The worker side of the freshVm broker: HTTP over the broker's unix socket, with undici. */
export class BrokerClient {
  private readonly agent: Agent

  constructor(
    readonly socketPath: string,
    private readonly owner: string,
  ) {
    this.agent = new (undici().Agent)({ connect: { socketPath } })
  }

  async create(spec: Omit<VmSpec, 'name'>): Promise<VmRecord> {
    const body = await this.post('/fresh', { owner: this.owner, spec }, scaleTimeout(FRESH_VM_CREATE_TIMEOUT_MS), 'FRESH_VM_CREATE_TIMEOUT_MS')
    return (body as { record: VmRecord }).record
  }

  async delete(name: string): Promise<void> {
    await this.post('/fresh/delete', { owner: this.owner, name }, scaleTimeout(FRESH_VM_DELETE_TIMEOUT_MS), 'FRESH_VM_DELETE_TIMEOUT_MS')
  }

  /** `reason`: why, for the summary (e.g. the failed test's name); plain `keep()` sends none. */
  async keep(name: string, reason?: string): Promise<void> {
    await this.post('/fresh/keep', { owner: this.owner, name, ...(reason !== undefined ? { reason } : {}) }, scaleTimeout(FRESH_VM_KEEP_TIMEOUT_MS), 'FRESH_VM_KEEP_TIMEOUT_MS')
  }

  close(): Promise<void> {
    return this.agent.close()
  }

  private async post(path: string, payload: unknown, timeoutMs: number, timeoutName: string): Promise<unknown> {
    let response
    try {
      response = await undici().request(`http://vm-pool-broker${path}`, {
        method: 'POST',
        dispatcher: this.agent,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(payload),
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      })
    } catch (error) {
      throw new VmPoolError({
        code: 'VMPOOL_HTTP_ERROR',
        operation: 'freshVm',
        message: `the freshVm broker at ${this.socketPath} did not answer ${path} (${timeoutName} = ${timeoutMs} ms)`,
        hint: 'the Vitest main process owns fresh VMs; is the run shutting down?',
        cause: error,
      })
    }
    const body = (await response.body.json()) as { error?: SerializedVmPoolError }
    if (response.statusCode !== 200) {
      if (body.error) throw VmPoolError.fromJSON(body.error)
      throw new VmPoolError({ code: 'VMPOOL_HTTP_ERROR', operation: 'freshVm', message: `the freshVm broker answered ${response.statusCode} to ${path}` })
    }
    return body
  }
}
