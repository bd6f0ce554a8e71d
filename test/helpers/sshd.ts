/**
 * A real OpenSSH sshd on 127.0.0.1 for tests: a free port, a temp config, a host key and a client key
 * generated now (never stored in the repo), `authorized_keys` for the current user (root in CI, hence
 * `PermitRootLogin prohibit-password`). `setEnv` reaches every session through sshd's `SetEnv`, which is
 * how the stand-in `multipass` gets onto the remote PATH. `stop()` ends this sshd by its pid.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'
import { generateSshKeyPair, type SshKeyPair } from '../../src/transport/ssh-keys.js'

export const SSHD_BINARY = '/usr/sbin/sshd'
/** Until sshd prints "Server listening". */
const SSHD_START_TIMEOUT_MS = 15_000
/** SIGTERM, then SIGKILL after this long. */
const SSHD_STOP_GRACE_MS = 3_000

/** Why sshd tests cannot run here, or undefined. In CI a missing sshd is an error, not a skip. */
export function getSshdSkipReason(): string | undefined {
  if (existsSync(SSHD_BINARY)) return undefined
  const reason = `OpenSSH sshd is not installed at ${SSHD_BINARY} (apt-get install openssh-server)`
  if (process.env.CI === 'true') throw new Error(`CI needs ${SSHD_BINARY}: ${reason}`)
  return reason
}

export interface StartedSshd {
  host: '127.0.0.1'
  /** The first of `ports`. */
  port: number
  /** Every port this sshd listens on: each one looks like another host to a client. */
  ports: number[]
  user: string
  /** The client key whose public half is authorized. */
  clientKey: SshKeyPair
  /** The server's host key as an OpenSSH public key line (pin it). */
  hostPublicKey: string
  /** The listening sshd (its children serve the connections). */
  pid: number
  /** Everything sshd logged so far. */
  log(): string
  stop(): Promise<void>
}

export interface StartSshdOptions {
  /** Environment for every session (`SetEnv`); values must not contain `"` or newlines. */
  setEnv?: Record<string, string>
  /** Listen on this many ports. @default 1 */
  portCount?: number
  /** sshd's LogLevel (`DEBUG1` also logs each forwarded channel's target). @default 'INFO' */
  logLevel?: 'INFO' | 'VERBOSE' | 'DEBUG1'
  /** sshd's MaxSessions: session channels per connection (0 refuses every session). @default OpenSSH's 10 */
  maxSessions?: number
}

export async function startSshd(options: StartSshdOptions = {}): Promise<StartedSshd> {
  const dir = mkdtempSync(join(tmpdir(), 'vm-pool-sshd-'))
  const clientKey = generateSshKeyPair('vm-pool-test-client')
  const hostKey = generateSshKeyPair('vm-pool-test-host')
  writeFileSync(join(dir, 'host_key'), hostKey.privateKey, { mode: 0o600 })
  writeFileSync(join(dir, 'authorized_keys'), `${clientKey.publicKey}\n`, { mode: 0o600 })
  const ports: number[] = []
  while (ports.length < (options.portCount ?? 1)) {
    const candidate = await getFreePort()
    if (!ports.includes(candidate)) ports.push(candidate)
  }
  // SHLVL=1: Debian's bash sources ~/.bashrc for every command sshd runs (SSH_SOURCE_BASHRC) unless it is a
  // nested shell; this machine's root .bashrc runs `pyenv init` (0.2 s idle, over 1 s under load) per exec.
  const setEnv = Object.entries({ SHLVL: '1', ...options.setEnv }).map(([name, value]) => {
    if (/["\n]/.test(value)) throw new Error(`startSshd: SetEnv value of ${name} cannot contain quotes or newlines`)
    return `"${name}=${value}"`
  })
  writeFileSync(
    join(dir, 'sshd_config'),
    [
      ...ports.map((port) => `Port ${port}`),
      'ListenAddress 127.0.0.1',
      `HostKey ${join(dir, 'host_key')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      'StrictModes no',
      'UsePAM no',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PermitRootLogin prohibit-password',
      `LogLevel ${options.logLevel ?? 'INFO'}`,
      ...(options.maxSessions === undefined ? [] : [`MaxSessions ${options.maxSessions}`]),
      ...(setEnv.length > 0 ? [`SetEnv ${setEnv.join(' ')}`] : []),
    ].join('\n'),
  )
  // sshd's privilege separation directory (exists only once the openssh-server service ran).
  if (process.getuid?.() === 0) mkdirSync('/run/sshd', { recursive: true, mode: 0o755 })
  const child: ChildProcess = spawn(SSHD_BINARY, ['-D', '-e', '-f', join(dir, 'sshd_config')], { stdio: ['ignore', 'ignore', 'pipe'] })
  let log = ''
  child.stderr!.on('data', (data: Buffer) => (log += data.toString()))
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), SSHD_STOP_GRACE_MS)
      await exited
      clearTimeout(timer)
    }
    rmSync(dir, { recursive: true, force: true })
  }

  const started = Date.now()
  const listening = () => ports.every((port) => log.includes(`Server listening on 127.0.0.1 port ${port}`))
  while (!listening()) {
    if (child.exitCode !== null || Date.now() - started > SSHD_START_TIMEOUT_MS) {
      await stop()
      throw new Error(`sshd did not start within ${SSHD_START_TIMEOUT_MS} ms (SSHD_START_TIMEOUT_MS): ${log}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return { host: '127.0.0.1', port: ports[0]!, ports, user: userInfo().username, clientKey, hostPublicKey: hostKey.publicKey, pid: child.pid!, log: () => log, stop }
}

export async function getFreePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  await new Promise((resolve) => server.close(resolve))
  return port
}
