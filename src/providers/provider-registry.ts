import { invalidOptions } from '../errors.js'
import type { VmProvider } from './vm-provider.js'

/**
 * Providers by name, for the edges that only have a name and serializable options
 * (the CLI's `--provider`, the Vitest plugin, workers reconnecting). Imports are lazy:
 * choosing `fake` never loads ssh2.
 */
const factories: Record<string, (options: unknown) => Promise<VmProvider>> = {
  qemu: async (options) => (await import('./qemu/qemu-provider.js')).qemuProvider(options as never),
  fake: async (options) => (await import('./fake-provider.js')).fakeProvider(options as never),
  multipass: async (options) => (await import('./multipass-provider.js')).multipassProvider(options as never),
  orbstack: async (options) => (await import('./orbstack-provider.js')).orbstackProvider(options as never),
  firecracker: async (options) => (await import('./firecracker-provider.js')).firecrackerProvider(options as never),
  ssh: async (options) => (await import('./ssh-provider.js')).sshProvider(options as never),
}

export type ProviderName = 'qemu' | 'multipass' | 'orbstack' | 'firecracker' | 'ssh' | 'fake'

export function getProviderNames(): string[] {
  return Object.keys(factories)
}

export async function createProvider(name: string, options: unknown = {}): Promise<VmProvider> {
  const factory = factories[name]
  if (!factory) {
    throw invalidOptions(`unknown provider ${JSON.stringify(name)}`, { hint: `choose one of: ${getProviderNames().join(', ')}` })
  }
  return factory(options)
}
