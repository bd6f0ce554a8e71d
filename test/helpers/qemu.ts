/**
 * Shared by every test that boots real QEMU VMs. `getQemuSkipReason()` decides skip-or-fail: outside
 * CI a missing QEMU or image skips with a printed reason; in CI (CI=true) it throws, so the test file
 * fails loudly instead of passing without testing anything. `useQemuTestProvider()` gives a provider
 * with a throwaway state dir (the built image is still found in the shared image dir) and deletes
 * every VM created in it afterwards, even when tests failed.
 */
import { accessSync, constants, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { qemuProvider, type QemuProvider } from '../../src/providers/qemu/qemu-provider.js'
import type { QemuProviderOptions } from '../../src/providers/qemu/qemu-provider-options.js'
import { DEFAULT_IMAGE_NAME, getImageDir, IMAGE_MANIFEST_FILE } from '../../src/providers/qemu/qemu-image.js'
import { isPidAlive } from '../../src/util/process-info.js'

/** Time a test allows for one `create` (a TCG boot, several at once on 2 cores). */
export const QEMU_TEST_CREATE_TIMEOUT_MS = 150_000

/** Live (not zombie) processes whose argv passes `match`: read from /proc here, independently of the provider's own scan. */
export function livePidsWhere(match: (argv: string[]) => boolean): number[] {
  const pids: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0')
      if (match(argv) && isPidAlive(Number(entry))) pids.push(Number(entry))
    } catch {
      // exited while we looked
    }
  }
  return pids
}

/** Pids of QEMU processes started for VM `name` (matched by `-name vm-pool-<name>` in their command line). */
export function qemuPidsFor(name: string): number[] {
  return livePidsWhere((argv) => {
    const at = argv.indexOf('-name')
    return at >= 0 && argv[at + 1] === `vm-pool-${name}`
  })
}

export function findOnPath(binary: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter).filter(Boolean)) {
    try {
      accessSync(join(dir, binary), constants.X_OK)
      return join(dir, binary)
    } catch {
      // next
    }
  }
  return undefined
}

let reported = false

/** Why real-QEMU tests cannot run here, or undefined. Throws in CI instead of returning a reason. */
export function getQemuSkipReason(): string | undefined {
  let reason: string | undefined
  if (!findOnPath('qemu-system-x86_64')) reason = 'qemu-system-x86_64 is not on PATH (apt-get install qemu-system-x86)'
  else if (!existsSync(join(getImageDir(), DEFAULT_IMAGE_NAME, IMAGE_MANIFEST_FILE))) reason = `the QEMU image is not built in ${getImageDir()} (run: npm run build && node dist/cli/main.js image build)`
  if (reason && process.env.CI === 'true') throw new Error(`CI must run the real-QEMU tests, but ${reason}`)
  if (reason && !reported) {
    reported = true
    console.warn(`skipping real-QEMU tests: ${reason}`)
  }
  return reason
}

export interface QemuTestProvider {
  provider: QemuProvider
  stateDir: string
  /** Delete every VM in this state dir, close connections, remove the dir. Safe to call twice. */
  cleanup(): Promise<void>
}

/** A qemu provider on a fresh temp state dir (short path: QEMU's monitor socket lives there). */
export function useQemuTestProvider(options: Omit<QemuProviderOptions, 'stateDir'> = {}): QemuTestProvider {
  const stateDir = mkdtempSync(join(tmpdir(), 'vmp-qemu-'))
  const provider = qemuProvider({ ...options, stateDir })
  return {
    provider,
    stateDir,
    async cleanup() {
      for (const info of await provider.list().catch(() => [])) await provider.delete(info.name).catch(() => {})
      await provider.close()
      rmSync(stateDir, { recursive: true, force: true })
    },
  }
}
