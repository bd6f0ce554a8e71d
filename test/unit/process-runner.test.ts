import { describe, expect, test } from 'vitest'
import { isVmPoolError } from '../../src/errors.js'
import { runProcess } from '../../src/transport/process-runner.js'
import { isPidAlive } from '../../src/util/process-info.js'

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
})
