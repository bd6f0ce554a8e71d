import { readFile, writeFile } from 'node:fs/promises'
import { VmPoolError, invalidOptions, isVmPoolError } from '../errors.js'
import { createPool, type DrainResult, type FreshVm, type PoolStats, type VmLease, type VmPool } from '../pool/vm-pool.js'
import { createProvider } from '../providers/provider-registry.js'
import type { ProviderProbe, Vm, VmProvider } from '../providers/vm-provider.js'
import { createDebug } from '../util/debug.js'
import { resolveHelperPoolConfig, type HelperPoolConfig } from './helper-pool-config.js'
import { PROTOCOL_VERSION, type ParsedRequest, type RequestId, type RequestOf } from './protocol-messages.js'

const debug = createDebug('vm-pool:protocol')

/** What a request handler may do besides answering: stream output, notice a `cancel`. */
export interface RequestContext {
  readonly id: RequestId
  /** Set for requests the client may cancel (an exec with `cancellable` or `timeoutMs`). */
  readonly signal: AbortSignal | undefined
  emit(event: 'stdout' | 'stderr', data: string): void
}

/** `vm.forwardPort` (docs/providers.md): a loopback port reaching a guest port. */
interface PortForward {
  readonly host: string
  readonly port: number
  close(): Promise<void>
}
type ForwardingVm = Vm & { forwardPort?(guestPort: number, options?: { hostPort?: number }): Promise<PortForward> }

type Held = { kind: 'lease'; name: string; leases: VmLease[] } | { kind: 'fresh'; name: string; fresh: FreshVm }

export interface DrainSummary extends DrainResult {
  stats: PoolStats
}

export interface ProtocolSessionOptions {
  env: NodeJS.ProcessEnv
  version: string
  /** The runner named its pid in `hello`: watch that one. */
  onRunnerPid(pid: number): void
  warn(message: string): void
}

/**
 * The state behind one helper: ONE pool for its runner process (created at `hello`), the VMs the runner
 * holds by name, and their port forwards. Leases, warm sharing and the reaper are the pool's; this class
 * only maps protocol requests onto `createPool`'s API (docs/protocol.md).
 */
export class ProtocolSession {
  readonly #options: ProtocolSessionOptions
  #hello: Promise<unknown> | undefined
  #config: HelperPoolConfig | undefined
  #provider: VmProvider | undefined
  #pool: VmPool | undefined
  #drained: Promise<DrainSummary> | undefined
  readonly #vms = new Map<string, Held>()
  readonly #forwards = new Map<string, { vm: string; forward: PortForward }>()
  #forwardCount = 0

  constructor(options: ProtocolSessionOptions) {
    this.#options = options
  }

  /** True once a `drain` ran (or shutdown drained): nothing of this runner is left to clean up. */
  get drained(): boolean {
    return this.#drained !== undefined
  }

  handle(request: ParsedRequest, context: RequestContext): Promise<unknown> {
    if (request.op === 'hello') {
      if (this.#hello) return Promise.reject(invalidOptions('hello was already sent: one helper serves one runner with one pool', { operation: 'hello' }))
      this.#hello = this.#doHello(request.params)
      return this.#hello
    }
    if (!this.#hello) return Promise.reject(invalidOptions(`${request.op} before hello`, { operation: request.op, hint: `send { "op": "hello", "protocol": ${PROTOCOL_VERSION} } first` }))
    // Requests pipelined behind hello wait for it; a failed hello fails them too.
    return this.#hello.then(() => this.#dispatch(request, context))
  }

  #dispatch(request: ParsedRequest, context: RequestContext): Promise<unknown> {
    switch (request.op) {
      case 'acquire':
        return this.#acquire(request.params)
      case 'fresh':
        return this.#fresh(request.params)
      case 'exec':
        return this.#exec(request.params, context)
      case 'putFile':
        return this.#putFile(request.params)
      case 'getFile':
        return this.#getFile(request.params)
      case 'forwardPort':
        return this.#forwardPort(request.params)
      case 'closePort':
        return this.#closePort(request.params.forward)
      case 'reset':
        return this.#reset(request.params)
      case 'release':
        return this.#release(request.params)
      case 'drain':
        return this.drain(request.params.discard)
      default:
        return Promise.reject(invalidOptions(`op ${request.op} is handled by the server`, { operation: request.op }))
    }
  }

  async #doHello(params: RequestOf<'hello'>): Promise<unknown> {
    if (params.protocol !== PROTOCOL_VERSION) {
      throw invalidOptions(`this helper speaks protocol ${PROTOCOL_VERSION}, the client asked for ${params.protocol}`, { operation: 'hello', hint: 'use a client and a vm-pool of matching versions' })
    }
    if (params.pid !== undefined) this.#options.onRunnerPid(params.pid)
    const config = resolveHelperPoolConfig(params.pool, this.#options.env)
    const provider = await createProvider(config.providerName, config.providerOptions)
    let probe: ProviderProbe | undefined
    let pool: VmPool | undefined
    try {
      if (params.check) probe = await checkProvider(provider, config)
      pool = createPool({
        provider,
        prefix: config.prefix,
        freshPrefix: config.freshPrefix,
        keepWarm: config.keepWarm,
        stateDir: config.stateDir,
        spec: config.spec,
        // The watchdog watches THIS process: if the helper dies without draining, it deletes what the runner held.
        reaper: { providerName: config.providerName, providerOptions: { ...config.providerOptions } },
        warn: this.#options.warn,
      })
      // The lease store (VM_POOL_LEASE_STORE) is part of the setup too: a wrong password or database must stop
      // the run at the check, not fail every test that asks for a VM. Reading the table opens it (and makes its schema).
      if (params.check) await pool.store.read()
    } catch (error) {
      await pool?.drain().catch(() => {})
      await provider.close?.().catch(() => {})
      throw error
    }
    this.#pool = pool
    this.#provider = provider
    this.#config = config
    debug('hello from %s: provider %s, run %s', params.client ?? 'a client', provider.name, this.#pool.runId)
    return {
      protocol: PROTOCOL_VERSION,
      version: this.#options.version,
      node: process.versions.node,
      pid: process.pid,
      provider: provider.name,
      runId: this.#pool.runId,
      stateDir: config.stateDir,
      ...(probe ? { probe } : {}),
    }
  }

  async #acquire(params: RequestOf<'acquire'>): Promise<unknown> {
    const lease = await this.#requirePool().acquire(params.key, params.name === undefined ? {} : { name: params.name })
    const held = this.#vms.get(lease.name)
    if (held?.kind === 'lease') held.leases.push(lease)
    else this.#vms.set(lease.name, { kind: 'lease', name: lease.name, leases: [lease] })
    return { vm: lease.name, name: lease.name, key: lease.key, adopted: lease.adopted, record: lease.vm.record }
  }

  async #fresh(params: RequestOf<'fresh'>): Promise<unknown> {
    const fresh = await this.#requirePool().fresh(params.name === undefined ? params.spec : { ...params.spec, name: params.name })
    this.#vms.set(fresh.name, { kind: 'fresh', name: fresh.name, fresh })
    return { vm: fresh.name, name: fresh.name, record: fresh.record }
  }

  async #exec(params: RequestOf<'exec'>, context: RequestContext): Promise<unknown> {
    const vm = this.#vm(params.vm, 'exec')
    const input = params.inputBase64 !== undefined ? Buffer.from(params.inputBase64, 'base64') : params.input
    return vm.exec(params.command, {
      ...(params.cwd !== undefined ? { cwd: params.cwd } : {}),
      ...(params.env !== undefined ? { env: params.env } : {}),
      ...(params.timeoutMs !== undefined ? { timeoutMs: params.timeoutMs } : {}),
      ...(input !== undefined ? { input } : {}),
      ...(context.signal ? { signal: context.signal } : {}),
      ...(params.stream ? { onStdout: (chunk: string) => context.emit('stdout', chunk), onStderr: (chunk: string) => context.emit('stderr', chunk) } : {}),
    })
  }

  async #putFile(params: RequestOf<'putFile'>): Promise<unknown> {
    const vm = this.#vm(params.vm, 'putFile')
    if (!vm.putFile) throw this.#missing(params.vm, 'putFile', 'put files')
    const data = params.data !== undefined ? Buffer.from(params.data, 'base64') : await readFile(params.localPath!)
    await vm.putFile(params.path, data)
    return { size: data.length }
  }

  async #getFile(params: RequestOf<'getFile'>): Promise<unknown> {
    const vm = this.#vm(params.vm, 'getFile')
    if (!vm.getFile) throw this.#missing(params.vm, 'getFile', 'get files')
    const data = await vm.getFile(params.path)
    if (params.localPath === undefined) return { size: data.length, data: data.toString('base64') }
    await writeFile(params.localPath, data)
    return { size: data.length }
  }

  async #forwardPort(params: RequestOf<'forwardPort'>): Promise<unknown> {
    const vm = this.#vm(params.vm, 'forwardPort') as ForwardingVm
    if (typeof vm.forwardPort !== 'function') throw this.#missing(params.vm, 'forwardPort', 'forward ports')
    const forward = await vm.forwardPort(params.guestPort, params.hostPort === undefined ? {} : { hostPort: params.hostPort })
    const id = `f${++this.#forwardCount}`
    this.#forwards.set(id, { vm: params.vm, forward })
    return { forward: id, host: forward.host, port: forward.port }
  }

  async #closePort(id: string): Promise<unknown> {
    const entry = this.#forwards.get(id)
    if (!entry) throw invalidOptions(`no open port forward ${JSON.stringify(id)}`, { operation: 'closePort', hint: 'closed already, or its VM was released' })
    this.#forwards.delete(id)
    await entry.forward.close()
    return {}
  }

  async #reset(params: RequestOf<'reset'>): Promise<unknown> {
    const held = this.#held(params.vm, 'reset')
    if (held.kind !== 'lease') throw invalidOptions(`${params.vm} is a fresh VM: release it and take a new one instead of resetting it`, { operation: 'reset', vm: params.vm })
    await this.#closeForwardsOf(params.vm)
    await held.leases[0]!.reset()
    return { record: held.leases[0]!.vm.record }
  }

  async #release(params: RequestOf<'release'>): Promise<unknown> {
    const held = this.#held(params.vm, 'release')
    if (params.keep && held.kind !== 'fresh') throw invalidOptions(`keep is for fresh VMs; ${params.vm} is leased (release it, with keepWarm it stays warm)`, { operation: 'release', vm: params.vm })
    this.#vms.delete(params.vm)
    await this.#closeForwardsOf(params.vm)
    if (held.kind === 'fresh') {
      await (params.keep ? held.fresh.keep() : held.fresh.delete())
    } else {
      for (const lease of held.leases) await lease.release({ discard: params.discard })
    }
    return {}
  }

  /**
   * Hand everything back and close the pool: with `discard` (the runner died or left without draining) leased
   * VMs are deleted even with keepWarm — their state is unknown, as for a crashed Vitest worker. Runs once.
   */
  drain(discard = false): Promise<DrainSummary> {
    this.#drained ??= this.#doDrain(discard)
    return this.#drained
  }

  async #doDrain(discard: boolean): Promise<DrainSummary> {
    await this.#hello?.catch(() => {})
    const pool = this.#pool
    const emptyStats: PoolStats = { created: 0, reused: 0, deleted: 0, warmed: 0, leaked: 0 }
    if (!pool) {
      await this.#provider?.close?.().catch(() => {})
      return { keptWarm: [], deleted: [], leaked: [], stats: emptyStats }
    }
    for (const id of [...this.#forwards.keys()]) await this.#closePort(id).catch(() => {})
    if (discard) {
      for (const held of this.#vms.values()) {
        if (held.kind === 'lease') for (const lease of held.leases) await lease.release({ discard: true }).catch((error: unknown) => this.#options.warn(`could not delete ${held.name}: ${(error as Error).message}`))
      }
    }
    this.#vms.clear()
    try {
      const result = await pool.drain()
      return { ...result, stats: { ...pool.stats } }
    } catch (error) {
      // VMPOOL_DELETE_FAILED: what could be done was done; the client gets the error with the numbers in details.
      if (isVmPoolError(error, 'VMPOOL_DELETE_FAILED')) throw new VmPoolError({ code: error.code, provider: error.provider, operation: 'drain', message: error.shortMessage, hint: error.hint, details: { ...error.details, stats: { ...pool.stats } } })
      throw error
    }
  }

  #requirePool(): VmPool {
    if (!this.#pool) throw new VmPoolError({ code: 'VMPOOL_INTERNAL', operation: 'protocol', message: 'no pool: hello did not complete' })
    return this.#pool
  }

  #held(name: string, operation: string): Held {
    const held = this.#vms.get(name)
    if (!held) {
      throw new VmPoolError({ code: 'VMPOOL_VM_NOT_FOUND', provider: this.#config?.providerName, operation, vm: name, message: `this helper holds no VM named ${name}`, hint: 'use the name acquire or fresh answered; a released VM is gone' })
    }
    return held
  }

  #vm(name: string, operation: string): ForwardingVm {
    const held = this.#held(name, operation)
    return held.kind === 'fresh' ? held.fresh : held.leases[0]!.vm
  }

  #missing(name: string, operation: string, what: string): VmPoolError {
    return new VmPoolError({ code: 'VMPOOL_INVALID_OPTIONS', provider: this.#config?.providerName, operation, vm: name, message: `the ${this.#config?.providerName} provider cannot ${what}` })
  }

  async #closeForwardsOf(vm: string): Promise<void> {
    for (const [id, entry] of this.#forwards) if (entry.vm === vm) await this.#closePort(id).catch(() => {})
  }
}

/**
 * `hello` with `check`: the provider's own probe, and the spec's image when the provider takes an `image`
 * option (qemu: a provider made with that image probes it) — so a missing image fails before any test runs.
 */
async function checkProvider(provider: VmProvider, config: HelperPoolConfig): Promise<ProviderProbe | undefined> {
  const probe = await provider.probe?.()
  const unusable = (result: ProviderProbe, subject: string) =>
    new VmPoolError({ code: 'VMPOOL_PROVIDER_UNAVAILABLE', provider: provider.name, operation: 'hello', message: `${subject} is not usable here: ${result.reason}`, hint: result.hint ?? `run: npx vm-pool doctor --provider ${provider.name}`, details: result.details })
  if (probe && !probe.usable) throw unusable(probe, `provider ${provider.name}`)
  const image = config.spec.image
  if (image === undefined) return probe
  let withImage: VmProvider
  try {
    withImage = await createProvider(config.providerName, { ...config.providerOptions, image })
  } catch (error) {
    // This provider has no image option: its create() judges spec.image.
    if (isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS')) return probe
    throw error
  }
  try {
    const imageProbe = await withImage.probe?.()
    if (imageProbe && !imageProbe.usable) throw unusable(imageProbe, `image ${JSON.stringify(image)} on ${provider.name}`)
    return imageProbe ?? probe
  } finally {
    await withImage.close?.().catch(() => {})
  }
}
