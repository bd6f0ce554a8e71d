/**
 * `qemuProvider({ host, ... })` at the edge: which option sets are refused and how (zod, then the key
 * source), that no message quotes a private key, what the fingerprint says about the VM host, and what
 * `describe` tells a person about a VM on a VM host. The provider itself runs against a real sshd in
 * test/contract/qemu-vm-host-provider.test.ts.
 */
import { afterEach, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { describeQemuVm, getQemuShellCommand } from '../../src/providers/qemu/kept-vm-help.js'
import { getQemuFingerprint, resolveQemuConfig, VM_HOST_PRIVATE_KEY_ENV, type QemuProviderOptions } from '../../src/providers/qemu/qemu-provider-options.js'
import { qemuProvider } from '../../src/providers/qemu/qemu-provider.js'
import { generateSshKeyPair } from '../../src/transport/ssh-keys.js'
import type { VmRecord } from '../../src/providers/vm-provider.js'

const hostKey = generateSshKeyPair('test-host').publicKey
const privateKey = generateSshKeyPair('test-client').privateKey
const base: QemuProviderOptions = { host: '10.0.0.5', user: 'ci', hostKey, privateKey }

function refusal(options: QemuProviderOptions): string {
  try {
    qemuProvider(options)
  } catch (error) {
    expect(isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS'), String(error)).toBe(true)
    const message = (error as Error).message
    expect(message).not.toContain(privateKey.split('\n')[1]!)
    return message
  }
  throw new Error(`qemuProvider(${JSON.stringify(Object.keys(options))}) was accepted`)
}

describe('qemuProvider({ host }) options', () => {
  afterEach(() => {
    delete process.env[VM_HOST_PRIVATE_KEY_ENV]
  })

  test('a VM host needs its pinned host key', () => {
    expect(refusal({ host: '10.0.0.5', privateKey })).toMatch(/hostKey: a VM host needs its pinned host key/)
  })

  test('a VM host needs a private key: privateKey, privateKeyFile or the environment variable', () => {
    expect(refusal({ host: '10.0.0.5', hostKey })).toMatch(new RegExp(`privateKey, privateKeyFile, or the ${VM_HOST_PRIVATE_KEY_ENV}`))
    process.env[VM_HOST_PRIVATE_KEY_ENV] = privateKey
    expect(qemuProvider({ host: '10.0.0.5', hostKey }).name).toBe('qemu')
  })

  test('privateKey and privateKeyFile together are refused, without quoting the key', () => {
    expect(refusal({ ...base, privateKeyFile: '/keys/ci' })).toMatch(/privateKeyFile: give privateKey or privateKeyFile, not both/)
  })

  test('a bad host key is refused', () => {
    expect(refusal({ ...base, hostKey: 'ssh-ed25519 not-base64!' })).toMatch(/not an OpenSSH public key line/)
    expect(refusal({ ...base, hostKey: 'SHA256:short' })).toMatch(/not an OpenSSH public key line/)
  })

  test('VM host options without host are refused, naming the option', () => {
    expect(refusal({ user: 'ci' })).toMatch(/user: user is an option of a VM host/)
    expect(refusal({ privateKeyFile: '/keys/ci' })).toMatch(/privateKeyFile: privateKeyFile is an option of a VM host/)
    // A private key given without host: refused without showing it.
    expect(refusal({ privateKey })).toMatch(/privateKey: .*not shown/)
  })

  test('stateDir and snapshotDir are refused with host; snapshots are on by default there, as locally', () => {
    expect(refusal({ ...base, stateDir: '/tmp/x' })).toMatch(/stateDir: .*use hostStateDir/)
    expect(refusal({ ...base, snapshotDir: '/tmp/x' })).toMatch(/snapshotDir: snapshots on a VM host live in <hostStateDir>\/qemu-snapshots/)
    expect(resolveQemuConfig(base).options.snapshot).toBe('auto')
    expect(qemuProvider(base).reset).toBeTypeOf('function')
    expect(qemuProvider({ ...base, snapshot: false }).reset).toBeUndefined()
  })

  test('the fingerprint names the VM host and its image folder there, never the key; a local one is unchanged', () => {
    const remote = getQemuFingerprint(resolveQemuConfig({ ...base, port: 2222 }), {})
    expect(remote).toMatchObject({ vmHost: 'ci@10.0.0.5:2222', image: '~/.cache/vm-pool/images/minimal', snapshot: 'auto' })
    expect(JSON.stringify(remote)).not.toContain(privateKey.split('\n')[1]!)
    expect(getQemuFingerprint(resolveQemuConfig({ ...base, imageDir: '/srv/images' }), { image: 'debian-12' }).image).toBe('/srv/images/debian-12')
    expect(Object.keys(getQemuFingerprint(resolveQemuConfig({}), {}))).toEqual(['image', 'cpus', 'memoryMiB', 'accel', 'snapshot', 'qemuBinary'])
  })
})

describe('describe(record) for a VM on a VM host', () => {
  const record: VmRecord = {
    name: 'kept-2',
    provider: 'qemu',
    createdAt: '2026-01-01T00:00:00.000Z',
    spec: { name: 'kept-2' },
    data: { host: '127.0.0.1', port: 40123, username: 'root', hostKey: 'ssh-ed25519 AAAA', keyPath: '/home/ci/.cache/vm-pool/qemu/kept-2/client_key', vmDir: '/home/ci/.cache/vm-pool/qemu/kept-2', pid: 4242, accel: 'tcg', image: '/img', vmHost: { host: '10.0.0.5', port: 22, user: 'ci', hostKey } },
  }

  test('reach: copy the guest key from its dir there (umask 077), then ssh -J through the VM host to its loopback port', () => {
    const { reach } = describeQemuVm(record)
    expect(reach).toBe(
      "(umask 077; ssh -p 22 ci@10.0.0.5 'cat -- /home/ci/.cache/vm-pool/qemu/kept-2/client_key' > vm-key-kept-2) && ssh -i vm-key-kept-2 -J ci@10.0.0.5:22 -p 40123 -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1",
    )
  })

  test('remove: over ssh to the VM host, kill the pid only if its command line names the pid file, then remove the dir', () => {
    expect(describeQemuVm(record).remove).toBe(
      `ssh -p 22 ci@10.0.0.5 'pid=$(cat /home/ci/.cache/vm-pool/qemu/kept-2/qemu.pid 2>/dev/null) && grep -qF -- /home/ci/.cache/vm-pool/qemu/kept-2/qemu.pid "/proc/$pid/cmdline" 2>/dev/null && kill "$pid"; rm -rf -- /home/ci/.cache/vm-pool/qemu/kept-2'`,
    )
  })

  test('a local provider refuses a VM-host record, and a VM-host provider refuses a record of another host or a local one', async () => {
    await expect(qemuProvider({ stateDir: '/tmp/vmp-unused' }).connect(record)).rejects.toThrow(/runs on a VM host .*not on this machine/)
    await expect(qemuProvider({ ...base, host: '10.0.0.6' }).connect(record)).rejects.toThrow(/runs on VM host ci@10\.0\.0\.5:22, but this provider reaches VM host ci@10\.0\.0\.6:22/)
    const { vmHost: _vmHost, ...local } = record.data
    await expect(qemuProvider(base).connect({ ...record, data: local })).rejects.toThrow(/runs on this machine \(a local QEMU VM\)/)
  })

  test('vm-pool ssh falls back to exec (the guest key is on the VM host)', () => {
    expect(getQemuShellCommand(record)).toBeUndefined()
  })
})
