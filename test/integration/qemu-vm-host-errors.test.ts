/**
 * `qemuProvider({ host })` when something is wrong, against a real sshd playing the VM host (no VM boots
 * here): another host key answers, the host refuses the key, the key file is missing, the image or QEMU is
 * not on the host, a VM of that name already exists there. Each is one clear VmPoolError; none shows a key,
 * and nothing is left on the host.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { isVmPoolError, type VmPoolErrorCode } from '../../src/errors.js'
import { qemuProvider, type QemuProvider } from '../../src/providers/qemu/qemu-provider.js'
import type { QemuProviderOptions } from '../../src/providers/qemu/qemu-provider-options.js'
import { generateSshKeyPair } from '../../src/transport/ssh-keys.js'
import { getVmHostSkipReason, startTestVmHost, type TestVmHost } from '../helpers/vm-host.js'

const skipReason = getVmHostSkipReason()

describe.skipIf(Boolean(skipReason))(`qemu on a VM host: failures${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let vmHost: TestVmHost
  const opened: QemuProvider[] = []
  const scratch = mkdtempSync(join(tmpdir(), 'vmp-hosterr-'))
  const open = (options: Omit<QemuProviderOptions, 'host'> = {}) => {
    const provider = qemuProvider(vmHost.options(options))
    opened.push(provider)
    return provider
  }
  /** Rejects with `code`, and neither the message nor the hint holds a line of a private key. */
  const rejectsWith = async (promise: Promise<unknown>, code: VmPoolErrorCode, message: RegExp, keys: string[] = [vmHost.sshd.clientKey.privateKey]) => {
    const error = await promise.then(
      () => undefined,
      (caught: unknown) => caught,
    )
    expect(isVmPoolError(error, code), String(error)).toBe(true)
    expect((error as Error).message).toMatch(message)
    const shown = `${(error as Error).message}\n${(error as { hint?: string }).hint ?? ''}`
    for (const key of keys) for (const line of key.split('\n').filter((l) => l.length >= 20 && !l.startsWith('-----'))) expect(shown).not.toContain(line)
  }

  beforeAll(async () => {
    vmHost = await startTestVmHost()
  }, 60_000)
  afterAll(async () => {
    for (const provider of opened) await provider.close()
    await vmHost?.stop()
    rmSync(scratch, { recursive: true, force: true })
  })

  test('another host key answering is VMPOOL_HOST_KEY_MISMATCH', async () => {
    await rejectsWith(open({ hostKey: generateSshKeyPair('impostor').publicKey }).list(), 'VMPOOL_HOST_KEY_MISMATCH', /refusing to connect/)
  })

  test('a key the host refuses is VMPOOL_AUTH_FAILED, the key not shown', async () => {
    const stranger = generateSshKeyPair('stranger').privateKey
    const keyFile = join(scratch, 'stranger')
    writeFileSync(keyFile, stranger, { mode: 0o600 })
    await rejectsWith(open({ privateKeyFile: keyFile }).list(), 'VMPOOL_AUTH_FAILED', /did not accept the private key/, [stranger])
  })

  test('a missing key file is VMPOOL_INVALID_OPTIONS naming the file', async () => {
    await rejectsWith(open({ privateKeyFile: join(scratch, 'no-such-key') }).list(), 'VMPOOL_INVALID_OPTIONS', /no-such-key cannot be read: ENOENT/)
  })

  test('an image that is not on the host: create fails with VMPOOL_IMAGE_MISSING, probe says so, nothing is left there', async () => {
    const provider = open({ imageDir: join(scratch, 'empty-images') })
    await rejectsWith(provider.create({ name: 'test-vm-noimage' }), 'VMPOOL_IMAGE_MISSING', /image "minimal" not found on VM host .*empty-images\/minimal\/manifest\.json does not exist/)
    expect(await provider.probe()).toMatchObject({ usable: false, reason: expect.stringMatching(/not found on VM host/) })
    expect(readdirSync(vmHost.hostStateDir)).toEqual([])
  })

  test('QEMU missing on the host is VMPOOL_PROVIDER_UNAVAILABLE with an install hint', async () => {
    await rejectsWith(open({ qemuBinary: 'no-such-qemu-system' }).create({ name: 'test-vm-noqemu' }), 'VMPOOL_PROVIDER_UNAVAILABLE', /no-such-qemu-system is not on the PATH of VM host/)
  })

  test('a VM dir of that name already on the host: VMPOOL_CREATE_FAILED, and that dir is left alone', async () => {
    const dir = join(vmHost.hostStateDir, 'qemu', 'test-vm-taken')
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, 'marker'), 'not yours')
    await rejectsWith(open({ accel: 'tcg' }).create({ name: 'test-vm-taken' }), 'VMPOOL_CREATE_FAILED', /a VM named test-vm-taken already exists on VM host/)
    expect(readdirSync(dir)).toEqual(['marker'])
    rmSync(dir, { recursive: true, force: true })
  })
})
