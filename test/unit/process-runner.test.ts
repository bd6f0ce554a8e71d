import { afterEach, describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { PROCESS_KILL_GRACE_MS, runProcess } from '../../src/transport/process-runner.js'
import { isPidAlive } from '../../src/util/process-info.js'
import { scaleTimeout } from '../../src/util/timeouts.js'

/** Pids of detached sleeps the tests start on purpose; ended by pid after each test. */
const strays: number[] = []
afterEach(() => {
  for (const pid of strays.splice(0)) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // already gone
    }
  }
})
/** `setsid` puts the sleep in a session of its own: the group kill misses it and it holds stdout open. */
const DETACHED_HOLDER = 'setsid sleep 30 & echo "$!"; echo started; sleep 30'
const holderPid = (stdout: string) => {
  const pid = Number(stdout.split('\n')[0])
  if (pid > 0) strays.push(pid)
  return pid
}

describe('runProcess', () => {
  test('collects stdout/stderr and the exit code', async () => {
    const result = await runProcess('sh', ['-c', 'echo out; echo err >&2; exit 5'])
    expect(result).toMatchObject({ exitCode: 5, stdout: 'out\n', stderr: 'err\n', timedOut: false })
  })

  test('a timeout kills the whole process group, not just the shell', async () => {
    const result = await runProcess('sh', ['-c', 'sleep 30 & echo $!; wait'], { timeoutMs: 300 })
    expect(result.timedOut).toBe(true)
    expect(result.exitCode).toBe(124)
    const grandchild = Number(result.stdout.trim())
    expect(grandchild).toBeGreaterThan(0)
    await new Promise((resolve) => setTimeout(resolve, 100))
    expect(isPidAlive(grandchild)).toBe(false)
  })

  test('multi-byte characters split across chunks are decoded whole', async () => {
    const chunks: string[] = []
    const result = await runProcess('sh', ['-c', "printf '\\342\\202'; sleep 0.1; printf '\\254 done'"], { onStdout: (c) => chunks.push(c) })
    expect(result.stdout).toBe('€ done')
    expect(chunks.join('')).toBe('€ done')
  })

  test('a missing program is a VMPOOL_EXEC_FAILED error naming it', async () => {
    await expect(runProcess('/no/such/program', [])).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_EXEC_FAILED') && String(error).includes('/no/such/program'))
  })

  test('a command that exits without reading its stdin is not an error', async () => {
    const result = await runProcess('true', [], { input: Buffer.alloc(1024 * 1024) })
    expect(result.exitCode).toBe(0)
  })

  test('a timeout ends the wait even when a detached child still holds stdout (after PROCESS_KILL_GRACE_MS)', async () => {
    const result = await runProcess('sh', ['-c', DETACHED_HOLDER], { timeoutMs: 300 })
    expect(holderPid(result.stdout)).toBeGreaterThan(0)
    expect(result).toMatchObject({ timedOut: true, exitCode: 124 })
    expect(result.stdout).toContain('started\n')
    // Without the grace close this waits for the detached sleep: 30 s.
    expect(result.durationMs).toBeLessThan(300 + scaleTimeout(PROCESS_KILL_GRACE_MS) + 5_000)
  }, 20_000)

  test('an abort ends the wait even when a detached child still holds stdout', async () => {
    const controller = new AbortController()
    const started = performance.now()
    const out: string[] = []
    const pending = runProcess('sh', ['-c', DETACHED_HOLDER], {
      signal: controller.signal,
      onStdout: (chunk) => {
        out.push(chunk)
        // Not at once: `setsid` must have moved the sleep out of the group first.
        if (out.join('').includes('started')) setTimeout(() => controller.abort(), 300)
      },
    })
    await expect(pending).rejects.toSatisfy((error) => isVmPoolError(error, 'VMPOOL_EXEC_ABORTED'))
    expect(holderPid(out.join(''))).toBeGreaterThan(0)
    expect(performance.now() - started).toBeLessThan(scaleTimeout(PROCESS_KILL_GRACE_MS) + 5_000)
  }, 20_000)
})
