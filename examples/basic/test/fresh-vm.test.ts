import { expect, freshVm, test } from 'vm-pool/vitest'

test('a fresh VM is a different machine, and goes away after the block', async ({ workerVm }) => {
  const workerBoot = (await workerVm.exec('cat /proc/sys/kernel/random/boot_id')).stdout
  {
    await using vm = await freshVm()
    expect(vm.name).not.toBe(workerVm.name)
    expect((await vm.exec('cat /proc/sys/kernel/random/boot_id')).stdout).not.toBe(workerBoot)
    // Break it as much as you like: nobody else ever uses this VM.
    await vm.exec('rm -rf /tmp/* && echo broken > /tmp/state')
    expect((await vm.exec('cat /tmp/state')).stdout).toBe('broken\n')
  }
  expect((await workerVm.exec('test -e /tmp/state')).exitCode).not.toBe(0)
})
