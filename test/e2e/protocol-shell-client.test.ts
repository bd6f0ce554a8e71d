import { spawn, spawnSync } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, beforeAll, describe, expect, test } from 'vitest'
import { ensureDistBuilt, makeStateDir } from '../../fixtures/pool/harness.js'
import { CLI, REPO } from '../helpers/protocol-client.js'
import { childEnded } from '../helpers/child-ended.js'

/**
 * docs/protocol.md's runnable example, examples/protocol/client.sh (bash + jq, no JavaScript or Python),
 * against the real helper on the fake provider: what it prints, and that it leaves nothing behind.
 */
const missing = ['bash', 'jq', 'base64'].filter((tool) => spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0)
const reason = missing.length > 0 ? `${missing.join(', ')} not installed (apt-get install ${missing.join(' ')})` : undefined
if (reason && process.env.CI === 'true') throw new Error(`CI must run the protocol shell client test, but ${reason}`)
if (reason) console.warn(`skipping the protocol shell client test: ${reason}`)

describe.skipIf(reason !== undefined)('examples/protocol/client.sh', () => {
  let state: ReturnType<typeof makeStateDir> | undefined
  beforeAll(async () => {
    await ensureDistBuilt()
  }, 180_000)
  afterEach(() => state?.dispose())

  test('leases a VM, streams, runs argv, copies a file both ways, shows an error, drains: nothing left', { timeout: 120_000 }, async () => {
    state = makeStateDir()
    const env = { ...process.env, VM_POOL_PROVIDER: 'fake', VM_POOL_STATE_DIR: state.dir, VM_POOL_HELPER: `${process.execPath} ${CLI}` }
    const child = spawn('bash', [join(REPO, 'examples/protocol/client.sh')], { env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
    const { code } = await childEnded(child)
    expect(code, `${stdout}\n${stderr}`).toBe(0)
    const vm = /^leased (vm-pool-runner-[a-z0-9]+-demo)$/m.exec(stdout)?.[1]
    expect(vm, stdout).toBeDefined()
    expect(stdout).toMatch(/^helper: vm-pool \d+\.\d+\.\d+ on Node\.js \d+\.\d+\.\d+, provider fake$/m)
    expect(stdout).toContain('Linux\ntick 1\ntick 2\ntick 3\nexit code 0 after ')
    expect(stdout).toContain("[two words]\n[$HOME]\n[it's]\n")
    expect(stdout).toContain('in the VM: 3000 bytes\nround trip ok\n')
    expect(stdout).toMatch(/^drained: \{"created":1,"reused":0,"deleted":1,"warmed":0,"leaked":0\}$/m)
    expect(stderr).toContain('error: VMPOOL_VM_NOT_FOUND: this helper holds no VM named no-such-vm (hint: ')
    const fake = join(state.dir, 'fake')
    expect(existsSync(fake) ? readdirSync(fake) : []).toEqual([])
  })
})
