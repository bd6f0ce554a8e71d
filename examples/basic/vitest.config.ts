import { defineConfig } from 'vitest/config'
import { vmPool } from 'vm-pool/vitest'

export default defineConfig({
  plugins: [vmPool({ provider: 'qemu', report: 'vm-pool-report.json' })],
  test: {
    include: ['test/**/*.test.ts'],
    // One VM per worker slot: 2 slots, 2 VMs, shared by the 5 files.
    maxWorkers: 2,
    // A cold TCG boot of a fresh VM is several seconds; commands in the guest are ~70 ms each.
    testTimeout: 120_000,
  },
})
