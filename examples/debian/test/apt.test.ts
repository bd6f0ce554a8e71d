import { expect, freshVm, test } from 'vm-pool/vitest'

test('apt-get installs a package from Debian in a throwaway VM', async ({ workerVm }) => {
  await using vm = await freshVm({ image: 'debian-12' })
  // The guest reaches Debian's mirror through QEMU's user-mode NAT.
  const install = await vm.exec('apt-get update -q && apt-get install -y -q --no-install-recommends hello', { env: { DEBIAN_FRONTEND: 'noninteractive' } })
  expect(install.exitCode, install.stderr).toBe(0)
  expect((await vm.exec('hello')).stdout).toBe('Hello, world!\n')
  // Only that VM has it: the worker VM (restored from the same snapshot) has its own disk.
  expect((await workerVm.exec('command -v hello')).exitCode).not.toBe(0)
})
