import { expect, test } from 'vm-pool/vitest'

test('start, see and stop a process in the guest', async ({ workerVm }) => {
  const started = await workerVm.exec('sleep 300 >/dev/null 2>&1 & echo $!')
  const pid = started.stdout.trim()
  expect(pid).toMatch(/^\d+$/)
  expect((await workerVm.exec(['kill', '-0', pid])).exitCode).toBe(0)
  await workerVm.exec(['kill', pid])
  // Reaped by init shortly after the kill.
  let alive = true
  for (let i = 0; i < 50 && alive; i++) alive = (await workerVm.exec(`[ -d /proc/${pid} ] && ! grep -q '^State:.*Z' /proc/${pid}/status`)).exitCode === 0
  expect(alive).toBe(false)
})

test('exit codes and stderr come back', async ({ workerVm }) => {
  const result = await workerVm.exec('echo oops >&2; exit 7')
  expect(result.exitCode).toBe(7)
  expect(result.stderr).toBe('oops\n')
})

test('a command that runs too long is stopped, the VM stays usable', async ({ workerVm }) => {
  const result = await workerVm.exec('sleep 30', { timeoutMs: 1_000 })
  expect(result.timedOut).toBe(true)
  expect((await workerVm.exec('echo still here')).stdout).toBe('still here\n')
})
