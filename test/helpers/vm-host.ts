/**
 * A VM host for tests: a real OpenSSH sshd on loopback (test/helpers/sshd.ts) in front of this machine,
 * so QEMU and the built image are the local ones, reached only through SSH. `useVmHostProvider()` gives
 * a `qemuProvider({ host })` on a throwaway VM-host state dir and deletes every VM made there afterwards.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { qemuProvider, type QemuProvider } from '../../src/providers/qemu/qemu-provider.js'
import type { QemuProviderOptions } from '../../src/providers/qemu/qemu-provider-options.js'
import { getImageDir } from '../../src/providers/qemu/qemu-image.js'
import { getQemuSkipReason } from './qemu.ts'
import { getSshdSkipReason, startSshd, type StartedSshd } from './sshd.ts'

/** Why VM-host tests cannot run here, or undefined; in CI a missing QEMU, image or sshd throws instead. */
export function getVmHostSkipReason(): string | undefined {
  return getQemuSkipReason() ?? getSshdSkipReason()
}

export interface TestVmHost {
  sshd: StartedSshd
  /** A throwaway `hostStateDir` (a path on the VM host, which is this machine). */
  hostStateDir: string
  /** The client key in a 0600 file: what `privateKeyFile` names for the CLI and other processes. */
  privateKeyFile: string
  /** Options naming this VM host with `privateKeyFile` (no key text: safe to hand to other processes). */
  options(extra?: Omit<QemuProviderOptions, 'host'>): QemuProviderOptions
  stop(): Promise<void>
}

export async function startTestVmHost(): Promise<TestVmHost> {
  // DEBUG1: sshd logs the target of each direct-tcpip channel, which shows a guest was reached through it.
  const sshd = await startSshd({ logLevel: 'DEBUG1' })
  const hostStateDir = mkdtempSync(join(tmpdir(), 'vmp-host-'))
  const keyDir = mkdtempSync(join(tmpdir(), 'vmp-hostkey-'))
  const privateKeyFile = join(keyDir, 'vm-host-key')
  writeFileSync(privateKeyFile, sshd.clientKey.privateKey, { mode: 0o600 })
  return {
    sshd,
    hostStateDir,
    privateKeyFile,
    options: (extra = {}) => ({ host: sshd.host, port: sshd.port, user: sshd.user, hostKey: sshd.hostPublicKey, privateKeyFile, hostStateDir, imageDir: getImageDir(), ...extra }),
    async stop() {
      await sshd.stop()
      rmSync(hostStateDir, { recursive: true, force: true })
      rmSync(keyDir, { recursive: true, force: true })
    },
  }
}

/** A provider on `vmHost`; `cleanup` deletes every VM it can list (even after failed tests) and closes it. */
export function useVmHostProvider(vmHost: TestVmHost, extra: Omit<QemuProviderOptions, 'host'> = {}): { provider: QemuProvider; cleanup(): Promise<void> } {
  const provider = qemuProvider(vmHost.options(extra))
  return {
    provider,
    async cleanup() {
      for (const info of await provider.list().catch(() => [])) await provider.delete(info.name).catch(() => {})
      await provider.close()
    },
  }
}
