import { vmPool } from 'vm-pool/vitest'
import { defineConfig } from 'vitest/config'

// Every VM of this suite runs the debian-12 image (build it once: sudo env "PATH=$PATH" npx vm-pool image build debian-12).
// The first VM boots Debian and saves it as a snapshot; every later VM is restored from it in seconds.
const DEBIAN_TIMEOUT_SCALE = Number(process.env.VM_POOL_TIMEOUT_SCALE ?? 1)

export default defineConfig({
  plugins: [
    vmPool({
      provider: 'qemu',
      // A cold Debian boot under TCG emulation takes 1-2 min on a busy 2-core machine (docs/qemu.md).
      providerOptions: { image: 'debian-12', memoryMiB: 512, bootTimeoutMs: 600_000 * DEBIAN_TIMEOUT_SCALE },
      report: 'vm-pool-report.json',
    }),
  ],
  test: {
    include: ['test/**/*.test.ts'],
    // One worker VM shared by the files; freshVm() adds throwaway ones.
    maxWorkers: 1,
    // apt-get over an emulated CPU is slow: minutes, not seconds.
    testTimeout: 900_000 * DEBIAN_TIMEOUT_SCALE,
    hookTimeout: 900_000 * DEBIAN_TIMEOUT_SCALE,
  },
})
