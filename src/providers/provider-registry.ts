import { invalidOptions } from '../errors.js'
import type { FakeProviderOptions } from './fake-provider.js'
import type { FirecrackerProviderOptions } from './firecracker-provider.js'
import type { MultipassProviderOptions } from './multipass-provider.js'
import type { OrbstackProviderOptions } from './orbstack-provider.js'
import type { QemuProviderOptions } from './qemu/qemu-provider-options.js'
import type { SshProviderOptions } from './ssh-provider.js'
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

/** Each registered provider's options, by name: what `createProvider(name, options)` and `vmPool({ provider, providerOptions })` take. */
export interface ProviderOptionsByName {
  qemu: QemuProviderOptions
  multipass: MultipassProviderOptions
  orbstack: OrbstackProviderOptions
  firecracker: FirecrackerProviderOptions
  ssh: SshProviderOptions
  fake: FakeProviderOptions
}

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
