/**
 * The Debian images the tests boot, built once per machine and reused (the recipe's own cache: a
 * rebuild happens only when the recipe version or its inputs change). They live in their own image
 * dir, never in the shared one (`~/.cache/vm-pool/images`), so tests never replace an image someone
 * else uses. A Debian build takes ~2-3 min on an idle 2-core host, and needs root (mmdebstrap).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { buildDebianImage } from '../../src/providers/qemu/images/debian-image-builder.js'
import type { BuildImageResult } from '../../src/providers/qemu/images/image-build-slot.js'
import { findOnPath } from '../../src/providers/qemu/images/host-tools.js'
import { getStateDir } from '../../src/util/state-dir.js'
import { getQemuSkipReason } from './qemu.ts'

/** `VM_POOL_TEST_IMAGE_DIR`, else `<state dir>/test-images`. */
export function getTestImageDir(): string {
  return process.env.VM_POOL_TEST_IMAGE_DIR ?? join(getStateDir(), 'test-images')
}

/**
 * Run by `--script` in the shared test image: the tests check its mark. A file, so CI can build the same
 * image ahead of the suite (`vm-pool image build debian-12 --script test/helpers/debian-test-script.sh`):
 * the inputs hash covers the script's contents, so the tests then find the image up to date.
 */
export const DEBIAN_TEST_SCRIPT = readFileSync(new URL('./debian-test-script.sh', import.meta.url), 'utf8')

/** First Debian boot under TCG is ~70 s on an idle host; several VMs on 2 busy cores take much longer. */
export const DEBIAN_BOOT_TIMEOUT_MS = 900_000
/** A Debian build plus slack for a busy host. */
export const DEBIAN_BUILD_TIMEOUT_MS = 60 * 60_000

/** Why the Debian tests cannot run here, or undefined. In CI (CI=true) it throws instead. */
export async function getDebianSkipReason(): Promise<string | undefined> {
  let reason = getQemuSkipReason()
  if (!reason && !(await findOnPath('mmdebstrap'))) reason = 'mmdebstrap is not installed (apt-get install mmdebstrap)'
  if (!reason && process.getuid?.() !== 0) reason = 'the Debian image build needs root (mmdebstrap root mode)'
  if (reason && process.env.CI === 'true') throw new Error(`CI must run the Debian image tests, but ${reason}`)
  if (reason) console.warn(`skipping Debian image tests: ${reason}`)
  return reason
}

const builds = new Map<string, Promise<BuildImageResult>>()

/**
 * `debian-12` (with DEBIAN_TEST_SCRIPT) or, with `cloudInit`, `debian-12-cloud` (cloud-init, no baked
 * key), in the test image dir. Concurrent test files share one build through the image's build lock.
 */
export function ensureDebianTestImage(options: { cloudInit?: boolean } = {}): Promise<BuildImageResult> {
  const name = options.cloudInit ? 'debian-12-cloud' : 'debian-12'
  let build = builds.get(name)
  if (!build) {
    const imageDir = getTestImageDir()
    mkdirSync(imageDir, { recursive: true, mode: 0o700 })
    const script = join(imageDir, '.test-script.sh')
    if (!options.cloudInit) writeFileSync(script, DEBIAN_TEST_SCRIPT, { mode: 0o755 })
    build = buildDebianImage({ imageDir, name, cloudInit: options.cloudInit, script: options.cloudInit ? undefined : script, log: (line) => console.log(`[${name}] ${line}`) })
    builds.set(name, build)
  }
  return build
}
