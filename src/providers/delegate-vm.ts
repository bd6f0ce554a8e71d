import type { Vm } from './vm-provider.js'

/** What a wrapper of a `Vm` (a fresh VM, a lease) passes through unchanged. */
export type VmOperations = Pick<Vm, 'exec' | 'putFile' | 'getFile' | 'putDirectory' | 'getDirectory' | 'forwardPort'>

/** The operations of `vm`, bound to it: spread into a wrapper so a new Vm method reaches every wrapper. */
export function delegateVmOperations(vm: Vm): VmOperations {
  return {
    exec: (command, options) => vm.exec(command, options),
    putFile: (path, data) => vm.putFile(path, data),
    getFile: (path) => vm.getFile(path),
    putDirectory: (localDir, guestDir) => vm.putDirectory(localDir, guestDir),
    getDirectory: (guestDir, localDir) => vm.getDirectory(guestDir, localDir),
    forwardPort: (guestPort, options) => vm.forwardPort(guestPort, options),
  }
}
