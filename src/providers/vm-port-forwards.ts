import { PortForwardSet } from '../transport/port-forward.js'

/**
 * The port forwards of every Vm a provider object handed out, by VM name: `delete(name)` closes
 * them (a forward never outlives its VM in this process), `Vm.close()` closes its own.
 */
export class VmPortForwards {
  readonly #byName = new Map<string, Set<PortForwardSet>>()

  /** A new set for one Vm object of `name`; `release` forgets it once that Vm closed. */
  open(name: string): { forwards: PortForwardSet; release: () => Promise<void> } {
    const forwards = new PortForwardSet()
    let sets = this.#byName.get(name)
    if (!sets) this.#byName.set(name, (sets = new Set()))
    sets.add(forwards)
    const release = async () => {
      await forwards.closeAll()
      sets.delete(forwards)
      if (sets.size === 0 && this.#byName.get(name) === sets) this.#byName.delete(name)
    }
    return { forwards, release }
  }

  /** Close every forward of VM `name` opened through this provider object. */
  async closeVm(name: string): Promise<void> {
    const sets = this.#byName.get(name)
    this.#byName.delete(name)
    await Promise.all([...(sets ?? [])].map((forwards) => forwards.closeAll()))
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.#byName.keys()].map((name) => this.closeVm(name)))
  }
}
