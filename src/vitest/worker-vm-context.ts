import { inject } from 'vitest'
import { VmPoolError } from '../errors.js'
import { createProvider } from '../providers/provider-registry.js'
import type { VmProvider } from '../providers/vm-provider.js'
import { BrokerClient } from './broker-client.js'
import { WORKER_CONTEXT_KEY, type VmPoolWorkerContext } from './worker-context.js'
import { docPath } from '../util/docs-path.js'

/**
 * Worker-side access to what the main process handed this worker. The provider and the broker
 * client are made once per worker (a module-level cache would be rebuilt per file under `isolate`,
 * so they live on globalThis).
 */
const CACHE = Symbol.for('vm-pool.vitest.worker')

interface WorkerCache {
  providers: Map<string, Promise<VmProvider>>
  brokers: Map<string, BrokerClient>
}

function getCache(): WorkerCache {
  const holder = globalThis as typeof globalThis & { [CACHE]?: WorkerCache }
  holder[CACHE] ??= { providers: new Map(), brokers: new Map() }
  return holder[CACHE]
}

export function getWorkerContext(operation: string): VmPoolWorkerContext {
  let context: VmPoolWorkerContext | undefined
  try {
    context = inject(WORKER_CONTEXT_KEY)
  } catch (error) {
    throw notConfigured(operation, error)
  }
  if (!context) throw notConfigured(operation)
  if (context.timeoutScale !== undefined) process.env.VM_POOL_TIMEOUT_SCALE ??= String(context.timeoutScale)
  return context
}

export function getWorkerProvider(context: VmPoolWorkerContext): Promise<VmProvider> {
  const cache = getCache().providers
  const key = JSON.stringify([context.provider, context.providerOptions])
  let provider = cache.get(key)
  if (!provider) {
    provider = createProvider(context.provider, context.providerOptions)
    provider.catch(() => cache.delete(key))
    cache.set(key, provider)
  }
  return provider
}

export function getBrokerClient(context: VmPoolWorkerContext): BrokerClient {
  const cache = getCache().brokers
  const key = `${context.brokerSocket}\0${context.owner}`
  let client = cache.get(key)
  if (!client) {
    client = new BrokerClient(context.brokerSocket, context.owner)
    cache.set(key, client)
  }
  return client
}

function notConfigured(operation: string, cause?: unknown): VmPoolError {
  return new VmPoolError({
    code: 'VMPOOL_INVALID_OPTIONS',
    operation,
    message: `${operation} needs the vmPool() plugin: this test file did not run in a vm-pool worker`,
    hint: `add plugins: [vmPool({ provider: 'qemu' })] to vitest.config.ts (see ${docPath('vitest.md')})`,
    cause,
  })
}
