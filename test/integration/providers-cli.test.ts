/**
 * multipass and orbstack providers against the stand-in CLIs in fixtures/bin (real executables on PATH,
 * state in a temp dir, every invocation logged), locally and — for multipass — on a real sshd.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { multipassProvider } from '../../src/providers/multipass-provider.js'
import { orbstackProvider } from '../../src/providers/orbstack-provider.js'
import { createProvider, getProviderNames } from '../../src/providers/provider-registry.js'
import type { VmProvider } from '../../src/providers/vm-provider.js'
import { FIXTURE_BIN_DIR, useFixtureCli } from '../helpers/fixture-cli.js'
import { getSshdSkipReason, startSshd, type StartedSshd } from '../helpers/sshd.js'

const fixture = useFixtureCli()
afterAll(() => fixture.dispose())

const NASTY = `it's "quoted" $(touch pwned) \`id\` ; rm -rf / # \\ $HOME *`
const BAD_NAMES = ['Bad Name', 'x; rm -rf ~', '$(touch pwned)', '../../etc', "it's", '-flag', '']

const providers: Array<[string, () => VmProvider, 'multipass' | 'orbctl']> = [
  ['multipass', () => multipassProvider(), 'multipass'],
  ['orbstack', () => orbstackProvider(), 'orbctl'],
]

describe.each(providers)('%s provider with the fixture CLI', (label, make, cli) => {
  const provider = make()
  afterAll(async () => {
    fixture.setUnavailable(false)
    for (const info of await provider.list()) await provider.delete(info.name)
  })

  test('is registered under its name', async () => {
    expect(getProviderNames()).toContain(label)
    expect((await createProvider(label, {})).name).toBe(label)
  })

  test('bad names are refused before any command runs', async () => {
    const before = fixture.calls().length
    for (const name of BAD_NAMES) {
      await expect(provider.create({ name })).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_NAME'))
      await expect(provider.delete(name)).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_NAME'))
      await expect(provider.connect({ name, provider: label, createdAt: '', spec: { name }, data: {} })).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_NAME'))
    }
    expect(fixture.calls().slice(before)).toEqual([])
  })

  test('an image that the CLI would read as an option is refused before any command runs', async () => {
    const before = fixture.calls().length
    for (const image of ['--force', '-x', '', 'ubuntu 22.04']) {
      await expect(provider.create({ name: 'image-check', image })).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_INVALID_OPTIONS') && String(error).includes('invalid image'))
    }
    expect(fixture.calls().slice(before)).toEqual([])
  })

  test('deleting a VM that is already gone succeeds, and the CLI was asked', async () => {
    const before = fixture.calls().length
    await provider.delete('never-existed-here')
    const calls = fixture.calls().slice(before)
    expect(calls).toHaveLength(1)
    expect(calls[0]).toMatchObject({ cli })
    expect(calls[0]!.argv).toContain('never-existed-here')
  })

  test('a command full of quotes and $() arrives intact, as argv and as env', async () => {
    await provider.create({ name: `${label}-quotes` })
    const vm = await provider.connect((await provider.list()).find((info) => info.name === `${label}-quotes`)?.record ?? { name: `${label}-quotes`, provider: label, createdAt: '', spec: { name: `${label}-quotes` }, data: {} })
    const result = await vm.exec(['printf', '%s', NASTY])
    expect(result).toMatchObject({ exitCode: 0, stdout: NASTY })
    expect((await vm.exec('printf %s "$V"', { env: { V: NASTY } })).stdout).toBe(NASTY)
    expect((await vm.exec(['test', '-e', 'pwned'])).exitCode).toBe(1)
  })

  test('exec on a VM deleted behind our back is VMPOOL_VM_NOT_FOUND, not a command failure', async () => {
    const record = await provider.create({ name: `${label}-vanishing` })
    const vm = await provider.connect(record)
    await provider.delete(record.name)
    await expect(vm.exec('true')).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_VM_NOT_FOUND'))
    await expect(provider.connect(record)).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_VM_NOT_FOUND'))
  })

  test('a stopped daemon is VMPOOL_PROVIDER_UNAVAILABLE with a hint, and probe says why', async () => {
    fixture.setUnavailable(true)
    try {
      for (const attempt of [() => provider.create({ name: `${label}-down` }), () => provider.list(), () => provider.delete(`${label}-down`)]) {
        const error = await attempt().then(() => undefined, (e: unknown) => e)
        expect(isVmPoolError(error, 'VMPOOL_PROVIDER_UNAVAILABLE')).toBe(true)
        expect((error as { hint?: string }).hint).toMatch(/\w/)
      }
      const probe = await provider.probe!()
      expect(probe.usable).toBe(false)
      expect(probe.reason).toMatch(/unavailable|not running/)
    } finally {
      fixture.setUnavailable(false)
    }
    expect((await provider.probe!()).usable).toBe(true)
  })

  test('describe: how to reach a kept VM, and a delete command that removes that VM and no other', async () => {
    const kept = await provider.create({ name: `${label}-kept-a` })
    const other = await provider.create({ name: `${label}-kept-b` })
    const help = provider.describe!(kept)
    expect(help.reach).toContain(kept.name)
    expect(help.remove).toContain(kept.name)
    // The printed command, run as a person would (the stand-in CLI is first on PATH).
    execFileSync('sh', ['-c', help.remove], { encoding: 'utf8' })
    const names = (await provider.list()).map((info) => info.name)
    expect(names).not.toContain(kept.name)
    expect(names).toContain(other.name)
    await provider.delete(other.name)
  })

  test('a missing CLI binary is VMPOOL_PROVIDER_UNAVAILABLE', async () => {
    const missing = label === 'multipass' ? multipassProvider({ multipassBinary: 'no-such-multipass' }) : orbstackProvider({ orbctlBinary: 'no-such-orbctl' })
    await expect(missing.list()).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_PROVIDER_UNAVAILABLE'))
    expect(await missing.probe!()).toMatchObject({ usable: false })
  })
})

describe('multipass command lines and JSON', () => {
  test('launch passes image, cpus, memory, disk and cloud-init (on stdin); list maps states', async () => {
    const cloudInit = `#cloud-config\nruncmd:\n  - echo "${NASTY}"\n`
    const provider = multipassProvider({ image: 'jammy', cpus: 2, memoryMiB: 1536, diskGiB: 7, cloudInit })
    const before = fixture.calls().length
    await provider.create({ name: 'mp-args', memoryMiB: 2048 })
    const launch = fixture.calls().slice(before)[0]!
    expect(launch.argv).toEqual(['launch', 'jammy', '--name', 'mp-args', '--cpus', '2', '--memory', '2G', '--disk', '7G', '--cloud-init', '-'])
    const meta = JSON.parse(readFileSync(join(fixture.dir, 'multipass', 'mp-args', 'meta.json'), 'utf8'))
    expect(meta.cloudInit).toBe(cloudInit)
    expect((await provider.list()).find((info) => info.name === 'mp-args')).toEqual({ name: 'mp-args', provider: 'multipass', state: 'running' })
    await provider.delete('mp-args')
    expect(fixture.calls().at(-1)!.argv).toEqual(['delete', '--purge', 'mp-args'])
  })

  test('a command that exits 2 or 3 by itself is a result, not a multipass failure', async () => {
    const provider = multipassProvider()
    const vm = await provider.connect(await provider.create({ name: 'mp-exit-codes' }))
    expect((await vm.exec('echo "exec failed: not really" >&2; exit 3')).exitCode).toBe(3)
    expect((await vm.exec('exit 2')).exitCode).toBe(2)
    await provider.delete('mp-exit-codes')
  })

  test('options are validated with the key path; a host needs user and key', () => {
    expect(() => multipassProvider({ cpus: 0 })).toThrow(/cpus/)
    expect(() => multipassProvider({ host: '127.0.0.1' })).toThrow(/user: required when host is set.*privateKey: required/)
    expect(() => multipassProvider({ user: 'root' })).toThrow(/user is only used with host/)
    expect(() => orbstackProvider({ image: 'ubuntu; rm -rf /' })).toThrow(/DISTRO/)
  })
})

const sshdSkip = getSshdSkipReason()
describe.skipIf(Boolean(sshdSkip))('remote multipass over a real sshd', () => {
  let sshd: StartedSshd
  beforeAll(async () => {
    sshd = await startSshd({ setEnv: { PATH: `${FIXTURE_BIN_DIR}:${dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin`, VM_POOL_FIXTURE_STATE: fixture.dir } })
  })
  afterAll(async () => sshd?.stop())
  const remote = (extra: Record<string, unknown> = {}) => multipassProvider({ host: sshd.host, port: sshd.port, user: sshd.user, privateKey: sshd.clientKey.privateKey, hostKey: sshd.hostPublicKey, ...extra })

  test('argv reaches the remote multipass intact: quotes and $() are not evaluated by the remote shell', async () => {
    const cloudInit = `#cloud-config\n# ${NASTY}\n`
    const provider = remote({ cloudInit })
    try {
      const before = fixture.calls().length
      const vm = await provider.connect(await provider.create({ name: 'remote-quotes' }))
      expect(fixture.calls()[before]!.argv).toEqual(['launch', '--name', 'remote-quotes', '--cpus', '1', '--memory', '1G', '--disk', '5G', '--cloud-init', '-'])
      expect(JSON.parse(readFileSync(join(fixture.dir, 'multipass', 'remote-quotes', 'meta.json'), 'utf8')).cloudInit).toBe(cloudInit)
      const mark = fixture.calls().length
      expect((await vm.exec(['printf', '%s', NASTY])).stdout).toBe(NASTY)
      const exec = fixture.calls()[mark]!
      expect(exec.argv.slice(0, 5)).toEqual(['exec', 'remote-quotes', '--', 'sh', '-c'])
      // The whole guest script arrived as ONE word with the $() still literal: the remote shell split nothing.
      expect(exec.argv).toHaveLength(6)
      expect(exec.argv[5]).toContain('$(touch pwned)')
      expect((await vm.exec(['test', '-e', 'pwned'])).exitCode).toBe(1)
      await provider.delete('remote-quotes')
      await provider.delete('remote-quotes')
    } finally {
      await provider.close!()
    }
  })

  test('the remote daemon being down is VMPOOL_PROVIDER_UNAVAILABLE naming the host', async () => {
    const provider = remote()
    fixture.setUnavailable(true)
    try {
      const error = await provider.list().then(() => undefined, (e: unknown) => e)
      expect(isVmPoolError(error, 'VMPOOL_PROVIDER_UNAVAILABLE')).toBe(true)
      expect(String(error)).toContain(`127.0.0.1:${sshd.port}`)
    } finally {
      fixture.setUnavailable(false)
      await provider.close!()
    }
  })

  test('multipass missing on the remote PATH is VMPOOL_PROVIDER_UNAVAILABLE', async () => {
    const provider = remote({ multipassBinary: 'multipass-not-installed' })
    try {
      await expect(provider.list()).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_PROVIDER_UNAVAILABLE') && /not installed/.test(String(error)))
    } finally {
      await provider.close!()
    }
  })

  test('a wrong pinned host key is refused before any multipass command runs; the key never shows in the error', async () => {
    const other = (await import('../../src/transport/ssh-keys.js')).generateSshKeyPair('other-host')
    const provider = remote({ hostKey: other.publicKey })
    const before = fixture.calls().length
    try {
      const error = await provider.list().then(() => undefined, (e: unknown) => e)
      expect(isVmPoolError(error, 'VMPOOL_HOST_KEY_MISMATCH')).toBe(true)
      expect(fixture.calls().length).toBe(before)
      const privateBody = sshd.clientKey.privateKey.split('\n')[1]!
      expect(`${String(error)}${(error as Error).stack}${JSON.stringify(error)}`).not.toContain(privateBody)
    } finally {
      await provider.close!()
    }
  })
})
