/**
 * `vm-pool/vitest`: one VM per Vitest worker slot, `workerVm`, `freshVm()`. See docs/vitest.md.
 * The plugin side (`vmPool`) loads Vitest's node API lazily, so test files importing `test`,
 * `expect` and `freshVm` from here stay light.
 */
export { vmPool } from './vm-pool-plugin.js'
export { vmPoolOptionsSchema } from './vm-pool-options.js'
export type { VmPoolOptions, VmPoolProviderChoice, ResolvedVmPoolOptions } from './vm-pool-options.js'
export { test, expect } from './test-with-vm.js'
export type { VmPoolFixtures } from './test-with-vm.js'
export { freshVm } from './fresh-vm.js'
export type { FreshVmSpec } from './fresh-vm.js'
export { logOutput } from './log-output.js'
export type { LoggedOutput } from './log-output.js'
// The pool's own type: `delete()`, `keep()` and `await using`, the same in a test as with `pool.fresh()`.
export type { FreshVm } from '../pool/vm-pool.js'
export type { VmPoolReport, VmPoolReportVm } from './vm-pool-report.js'
export type { VmPoolWorkerContext } from './worker-context.js'
export { VM_POOL_RUNNER_NAMES } from './vm-pool-runner.js'
export type { ExecOptions, ExecResult, ForwardPortOptions, PortForward, Vm, VmRecord, VmSpec } from '../providers/vm-provider.js'
