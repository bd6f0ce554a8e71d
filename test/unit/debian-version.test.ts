/** dpkg's version order, table-driven; the expected signs are what `dpkg --compare-versions` says. */
import { execFileSync } from 'node:child_process'
import { describe, expect, test } from 'vitest'
import { compareDebianVersions } from '../../src/providers/qemu/images/debian-version.js'
import { findOnPath } from '../../src/providers/qemu/images/host-tools.js'

const CASES: Array<[string, string, -1 | 0 | 1]> = [
  ['6.1.192-2', '6.1.176-1', 1],
  ['1:1.35.0-4+deb12u1+b1', '1.36.0-1', 1],
  ['1.0~rc1-1', '1.0-1', -1],
  ['1.0-1', '1.0-1', 0],
  ['1.0', '1.0-0', 0],
  ['2.36-9+deb12u14', '2.36-9+deb12u9', 1],
  ['1.2a-1', '1.2-1', 1],
  ['1.2+b1', '1.2', 1],
  ['1.2~', '1.2', -1],
  ['10.0', '9.9', 1],
  ['1.002', '1.2', 0],
  ['2022.83-1+deb12u3', '2022.83-1', 1],
]

describe('compareDebianVersions', () => {
  test.each(CASES)('%s vs %s → %i', (a, b, expected) => {
    expect(compareDebianVersions(a, b)).toBe(expected)
    expect(compareDebianVersions(b, a)).toBe(-expected || 0)
  })

  test('agrees with dpkg --compare-versions where dpkg is installed', async () => {
    const dpkg = await findOnPath('dpkg')
    if (!dpkg) return
    for (const [a, b, expected] of CASES) {
      const relation = expected < 0 ? 'lt' : expected > 0 ? 'gt' : 'eq'
      expect(() => execFileSync(dpkg, ['--compare-versions', a, relation, b]), `${a} ${relation} ${b}`).not.toThrow()
    }
  })
})
