/**
 * Where a user finds a page of the docs: they ship in the npm package (package.json `files`), so a
 * hint names the path in the user's project, which exists after `npm i vm-pool`. In this repository
 * the same page is docs/<page>.
 */
export const INSTALLED_DOCS_DIR = 'node_modules/vm-pool/docs'

/** `docPath('qemu.md')` → `node_modules/vm-pool/docs/qemu.md`; an `#anchor` may follow the page. */
export function docPath(page: string): string {
  return `${INSTALLED_DOCS_DIR}/${page}`
}
