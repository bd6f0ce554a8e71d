import { quoteShellArg } from '../../transport/shell.js'
import type { ExecOptions, ExecResult, Vm } from '../../providers/vm-provider.js'

/**
 * Unpack a tar into a directory of the VM, by piping it into `tar -x` through `vm.exec`'s stdin: every
 * provider can do that today (busybox tar included). This is the one place to switch to
 * `Vm.putDirectory(localDir, guestDir)` once the Vm contract has it.
 */
export function putTarInVm(vm: Vm, tar: Buffer, guestDir: string, options: Pick<ExecOptions, 'timeoutMs' | 'signal'> = {}): Promise<ExecResult> {
  const dir = quoteShellArg(guestDir)
  return vm.exec(`mkdir -p ${dir} && tar -x -f - -C ${dir}`, { ...options, input: tar })
}
