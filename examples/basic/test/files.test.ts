import { expect, test } from 'vm-pool/vitest'

test('write, read and list files in the guest', async ({ workerVm }) => {
  const dir = `/tmp/example-${process.pid}`
  await workerVm.exec(['mkdir', '-p', dir])
  await workerVm.exec(`echo hello > ${dir}/a.txt && echo world > ${dir}/b.txt`)
  expect((await workerVm.exec(`cat ${dir}/a.txt ${dir}/b.txt`)).stdout).toBe('hello\nworld\n')
  expect((await workerVm.exec(['ls', dir])).stdout.split('\n').filter(Boolean)).toEqual(['a.txt', 'b.txt'])
  // The worker VM is shared by the files of this slot: leave it as you found it.
  await workerVm.exec(['rm', '-rf', dir])
})

test('putFile and getFile move bytes between host and guest', async ({ workerVm }) => {
  const path = `/tmp/bytes-${process.pid}`
  const data = Buffer.from([0, 1, 2, 253, 254, 255])
  await workerVm.putFile(path, data)
  expect((await workerVm.exec(['wc', '-c', path])).stdout.trim()).toMatch(/^6\b/)
  expect(Buffer.compare(await workerVm.getFile(path), data)).toBe(0)
  await workerVm.exec(['rm', '-f', path])
})
