import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 20_000,
    hookTimeout: 60_000,
    // Real VMs and real processes: a couple of files at a time is what 2 cores take.
    maxWorkers: 2,
    // dist/ is built once here, before any test file runs (fixture processes and the CLI run the build).
    globalSetup: ['test/setup/build-dist.ts'],
    env: {
      // Tests run src/ through Vitest, where no compiled watchdog sits beside src/pool/reaper.ts: point the
      // pool at the built one (the seam is documented at REAPER_ENTRY_ENV in src/pool/reaper.ts).
      VM_POOL_REAPER_ENTRY: fileURLToPath(new URL('./dist/pool/reaper-main.js', import.meta.url)),
    },
  },
})
