/**
 * The one place that decides whether a tar entry may be written under the target directory of
 * `getDirectory` (pure functions, table-tested in test/unit/tar.test.ts). The extractor also never
 * writes through a symlink that exists on the host (tar-extractor.ts checks each parent with lstat),
 * so a link pointing out of the target is kept as a link but never followed.
 */

export type EntryPathVerdict =
  /** Path components under the target directory; `[]` is the target directory itself. */
  | { ok: true; parts: string[] }
  | { ok: false; reason: string }

/**
 * `./a//b/` → `['a', 'b']`. Refused: an absolute path (`/etc/x`, `C:\x`, `\\host\x`), a `..` component
 * anywhere (`a/../../x`, even when it would stay inside: tar never needs one), a NUL byte, a backslash
 * (a separator on Windows hosts).
 */
export function judgeEntryPath(name: string): EntryPathVerdict {
  if (name.includes('\0')) return { ok: false, reason: 'contains a NUL byte' }
  if (name.startsWith('/') || /^[A-Za-z]:/.test(name)) return { ok: false, reason: 'is an absolute path' }
  if (name.includes('\\')) return { ok: false, reason: 'contains a backslash' }
  const parts = name.split('/').filter((part) => part !== '' && part !== '.')
  if (parts.includes('..')) return { ok: false, reason: 'contains a `..` component' }
  return { ok: true, parts }
}

/** A hard link's target names another entry of the same archive: the same rules, and not the root. */
export function judgeHardLinkTarget(target: string): EntryPathVerdict {
  const verdict = judgeEntryPath(target)
  if (verdict.ok && verdict.parts.length === 0) return { ok: false, reason: 'links to the target directory itself' }
  return verdict
}
