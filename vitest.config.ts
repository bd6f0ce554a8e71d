import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 20_000,
    hookTimeout: 60_000,
    // Real VMs and real processes: a couple of files at a time is what 2 cores take.
    maxWorkers: 2,
  },
})
