import { expect, test } from 'vm-pool/vitest'

test('the guest runs Linux', async ({ workerVm }) => {
  const { stdout, exitCode } = await workerVm.exec('uname -s')
  expect(exitCode).toBe(0)
  expect(stdout.trim()).toBe('Linux')
})

test('the guest is not the host', async ({ workerVm }) => {
  const { stdout } = await workerVm.exec('cat /proc/sys/kernel/random/boot_id')
  const { readFileSync } = await import('node:fs')
  expect(stdout.trim()).not.toBe(readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim())
})

test('argv is quoted safely', async ({ workerVm }) => {
  const { stdout } = await workerVm.exec(['printf', '%s|', 'two words', '$HOME', "it's"])
  expect(stdout).toBe("two words|$HOME|it's|")
})
