/**
 * dpkg's version order (`dpkg --compare-versions`, deb-version(7)): `[epoch:]upstream[-revision]`,
 * epochs numerically, then upstream and revision with dpkg's `verrevcmp` — digit runs compare as
 * numbers, other characters by an order where `~` sorts before everything, even the end of the string.
 * Needed to pick the newest of a package that is in several suites (a security update beside the release).
 */
export function compareDebianVersions(a: string, b: string): number {
  const left = splitVersion(a)
  const right = splitVersion(b)
  return Math.sign(left.epoch - right.epoch) || verrevcmp(left.upstream, right.upstream) || verrevcmp(left.revision, right.revision)
}

function splitVersion(version: string): { epoch: number; upstream: string; revision: string } {
  const colon = version.indexOf(':')
  const epoch = colon > 0 ? Number(version.slice(0, colon)) : 0
  const rest = colon > 0 ? version.slice(colon + 1) : version
  const dash = rest.lastIndexOf('-')
  return { epoch: Number.isFinite(epoch) ? epoch : 0, upstream: dash >= 0 ? rest.slice(0, dash) : rest, revision: dash >= 0 ? rest.slice(dash + 1) : '' }
}

/** A character's weight in dpkg's order: `~` < end of string < letters < everything else. */
function order(char: string | undefined): number {
  if (char === undefined) return 0
  if (char === '~') return -1
  if (/[A-Za-z]/.test(char)) return char.charCodeAt(0)
  return char.charCodeAt(0) + 256
}

function verrevcmp(a: string, b: string): number {
  let i = 0
  let j = 0
  while (i < a.length || j < b.length) {
    let firstDiff = 0
    while ((i < a.length && !/\d/.test(a[i]!)) || (j < b.length && !/\d/.test(b[j]!))) {
      const ac = i < a.length && !/\d/.test(a[i]!) ? order(a[i]) : 0
      const bc = j < b.length && !/\d/.test(b[j]!) ? order(b[j]) : 0
      if (ac !== bc) return Math.sign(ac - bc)
      i++
      j++
    }
    while (a[i] === '0') i++
    while (b[j] === '0') j++
    while (i < a.length && /\d/.test(a[i]!) && j < b.length && /\d/.test(b[j]!)) {
      if (!firstDiff) firstDiff = a.charCodeAt(i) - b.charCodeAt(j)
      i++
      j++
    }
    if (i < a.length && /\d/.test(a[i]!)) return 1
    if (j < b.length && /\d/.test(b[j]!)) return -1
    if (firstDiff) return Math.sign(firstDiff)
  }
  return 0
}
