/**
 * sshProvider against a real OpenSSH sshd on loopback (three ports = three "machines"): one holder per
 * host, NO_CAPACITY when all are leased, reset on delete, pinned host keys, keys never in errors.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { generateSshKeyPair } from '../../src/transport/ssh-keys.js'
import { sshProvider, type SshProviderOptions } from '../../src/providers/ssh-provider.js'
import type { VmProvider } from '../../src/providers/vm-provider.js'
import { getSshdSkipReason, startSshd, type StartedSshd } from '../helpers/sshd.js'

const skipReason = getSshdSkipReason()

describe.skipIf(Boolean(skipReason))('ssh provider against a real sshd', () => {
  let sshd: StartedSshd
  const dirs: string[] = []
  const providers: VmProvider[] = []
  const tempDir = (prefix: string) => {
    const dir = mkdtempSync(join(tmpdir(), prefix))
    dirs.push(dir)
    return dir
  }
  const hostsOf = (count = sshd.ports.length) => sshd.ports.slice(0, count).map((port) => ({ host: sshd.host, port, user: sshd.user, privateKey: sshd.clientKey.privateKey, hostKey: sshd.hostPublicKey }))
  const make = (options: Partial<SshProviderOptions> & { stateDir: string }) => {
    const provider = sshProvider({ hosts: hostsOf(), ...options })
    providers.push(provider)
    return provider
  }
  const accepted = () => sshd.log().split('\n').filter((line) => line.includes('Accepted publickey')).length

  beforeAll(async () => {
    sshd = await startSshd({ portCount: 3 })
  })
  afterAll(async () => {
    for (const provider of providers) await provider.close?.()
    await sshd?.stop()
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
  })

  test('never gives one host to two holders, and says NO_CAPACITY when all are leased', async () => {
    const stateDir = tempDir('vm-pool-ssh-leases-')
    // Four provider objects share one lease file, as four processes on this machine would.
    const holders = Array.from({ length: 4 }, () => make({ stateDir }))
    const names = Array.from({ length: 8 }, (_, i) => `lease-test-${i}`)
    const outcomes = await Promise.allSettled(names.map((name, i) => holders[i % holders.length]!.create({ name })))
    const granted = outcomes.flatMap((outcome) => (outcome.status === 'fulfilled' ? [outcome.value] : []))
    const refused = outcomes.flatMap((outcome) => (outcome.status === 'rejected' ? [outcome.reason] : []))
    expect(granted).toHaveLength(3)
    expect(new Set(granted.map((record) => record.data.hostId)).size).toBe(3)
    expect(refused).toHaveLength(5)
    for (const error of refused) expect(isVmPoolError(error, 'VMPOOL_NO_CAPACITY')).toBe(true)
    const listed = await holders[0]!.list()
    expect(listed.map((info) => info.name).sort()).toEqual(granted.map((record) => record.name).sort())
    // Each granted VM runs on its own port: prove it through the connection itself.
    for (const record of granted) {
      const vm = await holders[1]!.connect(record)
      expect((await vm.exec('echo "$SSH_CONNECTION"')).stdout.trim().split(' ')[3]).toBe(String(record.data.port))
    }
    // Freeing one host lets exactly one more holder in.
    await holders[2]!.delete(granted[0]!.name)
    const next = await holders[3]!.create({ name: 'lease-test-next' })
    expect(next.data.hostId).toBe(granted[0]!.data.hostId)
    await expect(holders[0]!.create({ name: 'lease-test-more' })).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_NO_CAPACITY'))
    await expect(holders[0]!.create({ name: 'lease-test-next' })).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_CREATE_FAILED'))
    for (const info of await holders[0]!.list()) await holders[0]!.delete(info.name)
    expect(await holders[0]!.list()).toEqual([])
  })

  test('a stale handle cannot run commands on the host after it was freed and leased again', async () => {
    const stateDir = tempDir('vm-pool-ssh-stale-')
    const provider = make({ stateDir, hosts: hostsOf(1) })
    const first = await provider.create({ name: 'stale-first' })
    const stale = await provider.connect(first)
    await provider.delete('stale-first')
    await provider.create({ name: 'stale-second' })
    await expect(stale.exec('echo must-not-run')).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_VM_NOT_FOUND'))
    await expect(provider.connect(first)).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_VM_NOT_FOUND'))
    await provider.delete('stale-second')
  })

  test('delete runs the reset command; a failing reset keeps the host leased', async () => {
    const stateDir = tempDir('vm-pool-ssh-reset-')
    const work = tempDir('vm-pool-ssh-reset-work-')
    const marker = join(work, 'dirty')
    const failing = make({ stateDir, hosts: hostsOf(1), reset: `rm -f '${marker}' && test ! -e '${work}/broken'` })
    const vm = await failing.connect(await failing.create({ name: 'reset-test' }))
    expect((await vm.exec(['touch', marker, join(work, 'broken')])).exitCode).toBe(0)
    await expect(failing.delete('reset-test')).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_DELETE_FAILED'))
    expect((await failing.list()).map((info) => info.name)).toEqual(['reset-test'])
    await expect(failing.create({ name: 'reset-other' })).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_NO_CAPACITY'))
    rmSync(join(work, 'broken'))
    await failing.delete('reset-test')
    expect(existsSync(marker)).toBe(false)
    expect(await failing.list()).toEqual([])
    await failing.delete('reset-test')
  })

  test('a wrong pinned host key is refused and the lease is given back', async () => {
    const stateDir = tempDir('vm-pool-ssh-hostkey-')
    const impostorKey = generateSshKeyPair('not-this-host').publicKey
    const provider = make({ stateDir, hosts: hostsOf(1).map((host) => ({ ...host, hostKey: impostorKey })) })
    const error = await provider.create({ name: 'hostkey-test' }).then(() => undefined, (e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_HOST_KEY_MISMATCH')).toBe(true)
    expect(await provider.list()).toEqual([])
    expect(await provider.probe!()).toMatchObject({ usable: false })
  })

  test('a key the host does not accept is VMPOOL_AUTH_FAILED, and no private key shows up anywhere', async () => {
    const stateDir = tempDir('vm-pool-ssh-auth-')
    const stranger = generateSshKeyPair('stranger')
    const provider = make({ stateDir, hosts: hostsOf(1).map((host) => ({ ...host, privateKey: stranger.privateKey })) })
    const error = await provider.create({ name: 'auth-test' }).then(() => undefined, (e: unknown) => e)
    expect(isVmPoolError(error, 'VMPOOL_AUTH_FAILED')).toBe(true)
    const visible = `${String(error)}${(error as Error).stack}${JSON.stringify(error)}${JSON.stringify(provider)}`
    for (const key of [stranger.privateKey, sshd.clientKey.privateKey]) expect(visible).not.toContain(key.split('\n')[1])
    expect(await provider.list()).toEqual([])
  })

  test('bad names are refused before any connection is made', async () => {
    const provider = make({ stateDir: tempDir('vm-pool-ssh-names-') })
    const before = accepted()
    for (const name of ['Bad Name', '$(reboot)', "it's", '../x']) {
      await expect(provider.create({ name })).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_NAME'))
      await expect(provider.delete(name)).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_NAME'))
    }
    expect(accepted()).toBe(before)
    expect(() => sshProvider({ hosts: [] })).toThrow(/hosts/)
    expect(() => sshProvider({ hosts: [...hostsOf(1), ...hostsOf(1)] })).toThrow(/listed twice/)
  })

  test('a corrupt lease file is VMPOOL_LEASE_STORE naming it, not a raw SyntaxError', async () => {
    const stateDir = tempDir('vm-pool-ssh-corrupt-')
    mkdirSync(join(stateDir, 'ssh'))
    writeFileSync(join(stateDir, 'ssh', 'leases.json'), '{"leases": {')
    const provider = make({ stateDir })
    for (const attempt of [() => provider.list(), () => provider.create({ name: 'corrupt-lease' }), () => provider.delete('corrupt-lease')]) {
      const error = await attempt().then(() => undefined, (e: unknown) => e)
      expect(isVmPoolError(error, 'VMPOOL_LEASE_STORE')).toBe(true)
      expect(String(error)).toContain(join(stateDir, 'ssh', 'leases.json'))
    }
  })

  test('describe: an ssh line for the leased host without any key material; the delete names that VM only', async () => {
    const provider = make({ stateDir: tempDir('vm-pool-ssh-describe-') })
    const record = await provider.create({ name: 'describe-me' })
    try {
      const help = provider.describe!(record)
      expect(help.reach).toContain(`ssh -p ${record.data.port} ${sshd.user}@${sshd.host}`)
      expect(help.remove).toContain("delete('describe-me')")
      expect(help.remove).toContain(String(record.data.hostId))
      const keyBody = sshd.clientKey.privateKey.split('\n')[1]!
      expect(JSON.stringify(help)).not.toContain(keyBody)
    } finally {
      await provider.delete('describe-me')
    }
  })
})
