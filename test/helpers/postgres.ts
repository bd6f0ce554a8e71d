/**
 * A real PostgreSQL cluster for tests, in a temp dir: initdb with a generated password (scram-sha-256),
 * pg_ctl start on a free 127.0.0.1 port (and a unix socket in the temp dir), stop by pg_ctl. As root, the
 * server runs as the `postgres` user (PostgreSQL refuses to run as root) through `runuser`. Debian's
 * packages put the binaries in /usr/lib/postgresql/<version>/bin; `pg_config --bindir` or PATH otherwise.
 * In CI (CI=true) a missing PostgreSQL throws; elsewhere the tests skip with the reason.
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process'
import { promisify } from 'node:util'
import { randomBytes } from 'node:crypto'
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'

/** pg_ctl start/stop wait (-t), generous for 2 busy cores. */
const PG_CTL_WAIT_SECONDS = 60

function findBinDir(): string | undefined {
  const debian = '/usr/lib/postgresql'
  if (existsSync(debian)) {
    const versions = readdirSync(debian).filter((v) => existsSync(join(debian, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a))
    if (versions[0]) return join(debian, versions[0], 'bin')
  }
  const fromConfig = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' })
  if (fromConfig.status === 0 && existsSync(join(fromConfig.stdout.trim(), 'initdb'))) return fromConfig.stdout.trim()
  return undefined
}

/** Why PostgreSQL tests cannot run here, or undefined. In CI a missing PostgreSQL is an error, not a skip. */
export function getPostgresSkipReason(): string | undefined {
  const bin = findBinDir()
  let reason: string | undefined
  if (!bin) reason = 'PostgreSQL is not installed (apt-get install postgresql): no initdb in /usr/lib/postgresql/*/bin or from pg_config'
  else if (process.getuid?.() === 0 && spawnSync('id', ['-u', 'postgres']).status !== 0) reason = 'running as root and there is no `postgres` user to run the server as'
  if (reason && process.env.CI === 'true') throw new Error(`CI needs PostgreSQL: ${reason}`)
  return reason
}

export interface StartedPostgres {
  port: number
  user: string
  password: string
  /** `postgres://user:password@127.0.0.1:port/<database>` */
  url(database: string, password?: string): string
  /** A new, empty database; returns its URL. */
  createDatabase(name: string): Promise<string>
  /** Run SQL as the superuser in `database`. */
  sql(database: string, text: string): Promise<pg.QueryResult>
  /** pg_ctl stop (fast: sessions are cut, as in a real restart), then start; the event loop keeps running meanwhile. */
  restart(): Promise<void>
  stop(): void
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

export async function startPostgres(): Promise<StartedPostgres> {
  const bin = findBinDir()!
  const asRoot = process.getuid?.() === 0
  const dir = mkdtempSync(join(tmpdir(), 'vm-pool-pg-'))
  const data = join(dir, 'data')
  const user = 'vmpool_test'
  const password = `pw-${randomBytes(9).toString('base64url')}`
  writeFileSync(join(dir, 'pwfile'), `${password}\n`, { mode: 0o600 })
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim())
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim())
    chownSync(dir, uid, gid)
    chownSync(join(dir, 'pwfile'), uid, gid)
    chmodSync(dir, 0o700)
  }
  const run = (tool: string, args: string[]) => {
    const command = asRoot ? 'runuser' : join(bin, tool)
    const argv = asRoot ? ['-u', 'postgres', '--', join(bin, tool), ...args] : args
    const result = spawnSync(command, argv, { encoding: 'utf8', cwd: dir })
    if (result.status !== 0) throw new Error(`${tool} ${args.join(' ')} failed (${result.status}): ${result.stderr}${result.stdout}`)
  }
  const runAsync = async (tool: string, args: string[]) => {
    const command = asRoot ? 'runuser' : join(bin, tool)
    const argv = asRoot ? ['-u', 'postgres', '--', join(bin, tool), ...args] : args
    await promisify(execFile)(command, argv, { cwd: dir })
  }
  run('initdb', ['-D', data, '-U', user, `--pwfile=${join(dir, 'pwfile')}`, '--auth=scram-sha-256', '-E', 'UTF8', '--no-sync'])
  const port = await freePort()
  const options = `-c listen_addresses=127.0.0.1 -p ${port} -k ${dir} -c fsync=off -c synchronous_commit=off -c full_page_writes=off`
  const start = () => run('pg_ctl', ['-D', data, '-o', options, '-l', join(dir, 'log'), '-w', '-t', String(PG_CTL_WAIT_SECONDS), 'start'])
  start()
  const url = (database: string, pw = password) => `postgres://${user}:${encodeURIComponent(pw)}@127.0.0.1:${port}/${database}`
  const sql = async (database: string, text: string) => {
    const client = new pg.Client({ connectionString: url(database) })
    await client.connect()
    try {
      return await client.query(text)
    } finally {
      await client.end()
    }
  }
  let stopped = false
  const stopCluster = () => {
    if (stopped) return
    stopped = true
    process.off('exit', stopAtExit)
    try {
      run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', '-t', String(PG_CTL_WAIT_SECONDS), 'stop'])
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }
  // A test file whose hooks hang or time out may never reach its `stop()`: the cluster must not outlive the
  // test process (a normal exit of a Vitest worker runs this; a SIGKILL does not).
  const stopAtExit = () => {
    try {
      stopCluster()
    } catch {
      // Already down.
    }
  }
  process.once('exit', stopAtExit)
  return {
    port,
    user,
    password,
    url,
    async createDatabase(name) {
      await sql('postgres', `CREATE DATABASE ${name}`)
      return url(name)
    },
    sql,
    async restart() {
      await runAsync('pg_ctl', ['-D', data, '-m', 'fast', '-w', '-t', String(PG_CTL_WAIT_SECONDS), 'stop'])
      // Down for a moment, as a real restart is: clients see refused connections, not just cut ones.
      await new Promise((resolve) => setTimeout(resolve, 500))
      await runAsync('pg_ctl', ['-D', data, '-o', options, '-l', join(dir, 'log'), '-w', '-t', String(PG_CTL_WAIT_SECONDS), 'start'])
    },
    stop: stopCluster,
  }
}
