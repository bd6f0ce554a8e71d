import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { promisify } from 'node:util'
import { describe, expect, test } from 'vitest'

const bin = new URL('../../dist/cli/main.js', import.meta.url).pathname
const run = async (args: string[], env: Record<string, string> = {}) => {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [bin, ...args], { env: { ...process.env, DEBUG: '', ...env } })
    return { code: 0, stdout, stderr }
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string }
    return { code: e.code, stdout: e.stdout, stderr: e.stderr }
  }
}

describe('vm-pool (the built bin)', () => {
  test('--help lists the commands and environment variables', async () => {
    const { code, stdout } = await run(['--help'])
    expect(code).toBe(0)
    expect(stdout).toMatch(/^Usage: vm-pool <command>/)
    expect(stdout).toContain('VM_POOL_TIMEOUT_SCALE')
    // The shared lease store is found from --help, not only from the docs.
    expect(stdout).toMatch(/VM_POOL_LEASE_STORE +the lease table: postgres:\/\//)
    expect(stdout).toContain('VM_POOL_HOST_ID')
  })

  test('the commands that use the lease store name VM_POOL_LEASE_STORE in their --help', async () => {
    for (const command of ['run', 'ls', 'gc', 'warm']) {
      const { stdout } = await run([command, '--help'])
      expect({ command, named: stdout.includes('VM_POOL_LEASE_STORE') }).toEqual({ command, named: true })
    }
  })

  test('no command prints help and exits 2', async () => {
    const { code, stdout } = await run([])
    expect(code).toBe(2)
    expect(stdout).toContain('Usage: vm-pool')
  })

  test('--version prints the package version', async () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'))
    const { code, stdout } = await run(['--version'])
    expect(code).toBe(0)
    expect(stdout.trim()).toBe(pkg.version)
  })

  test('every command has --help: usage on stdout, exit 0, nothing run', async () => {
    for (const command of ['run', 'ls', 'gc', 'warm', 'image', 'doctor', 'ssh', 'rm']) {
      const { code, stdout, stderr } = await run([command, '--help'], { VM_POOL_PROVIDER: 'no-such-provider' })
      expect({ command, code, stderr }).toEqual({ command, code: 0, stderr: '' })
      expect(stdout).toMatch(new RegExp(`^Usage: vm-pool ${command} `))
    }
  })

  test('malformed VM_POOL_PROVIDER_OPTIONS: exit 2, and no excerpt of the (secret-bearing) value in the message', async () => {
    for (const value of ['{"token":SUPERSECRETTOKEN}', 'SUPERSECRETTOKEN', '{"privateKey":"SUPERSECRETKEY"']) {
      const { code, stderr } = await run(['ls', '--provider', 'fake'], { VM_POOL_PROVIDER_OPTIONS: value })
      expect(code).toBe(2)
      expect(stderr).toMatch(/^vm-pool ls: VM_POOL_PROVIDER_OPTIONS must be a JSON object: /)
      expect(stderr).not.toMatch(/SUPER|SECRET/)
    }
  })

  test('an unknown command exits 2 with a message and no stack trace', async () => {
    const { code, stderr } = await run(['frobnicate'])
    expect(code).toBe(2)
    expect(stderr).toContain('unknown command "frobnicate"')
    expect(stderr).not.toMatch(/\n\s+at /)
  })

  test('did you mean: a mistyped command or option gets a suggestion, not the whole help nor a raw parser message', async () => {
    const command = await run(['dcotor'])
    expect(command).toMatchObject({ code: 2, stdout: '' })
    expect(command.stderr).toBe(`vm-pool: unknown command "dcotor" (did you mean doctor?)\nRun 'vm-pool --help' for usage.\n`)
    const none = await run(['zzzz'])
    expect(none.stderr).toMatch(/^vm-pool: unknown command "zzzz"; commands: .*\bdoctor\b.*\n/)
    expect(none.stderr).not.toContain('Usage:')

    const option = await run(['run', '--keepvm', 'x.yml'])
    expect(option).toMatchObject({ code: 2, stderr: `vm-pool run: unknown option --keepvm (did you mean --keep-vm?)\nRun 'vm-pool run --help' for usage.\n` })
    expect((await run(['gc', '--dryrun'])).stderr).toContain('unknown option --dryrun (did you mean --dry-run?)')
    expect((await run(['ls', '--bogus'])).stderr).toMatch(/^vm-pool ls: unknown option --bogus\n/)
    // A value starting with a dash: one plain line saying how to write it, not Node's message with \n escapes.
    expect(await run(['warm', '--count', '-1'])).toMatchObject({ code: 2, stderr: `vm-pool warm: --count needs a value; to give one starting with a dash, write --count=-VALUE\nRun 'vm-pool warm --help' for usage.\n` })
    // A GitHub option with a file that does not exist: the file is missing, not "not a GitHub file".
    expect(await run(['run', '/nonexistent/ci.yml', '--job', 'x'])).toMatchObject({ code: 2, stderr: `vm-pool run: cannot read workflow file /nonexistent/ci.yml: no such file\nRun 'vm-pool run --help' for usage.\n` })
    expect(await run(['warm', '--count=-1'])).toMatchObject({ code: 2, stderr: expect.stringContaining('--count must be an integer >= 1, got "-1"') })
  })
})
