import { VmPoolError } from '../errors.js'

export const VM_NAME_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/

/** Refuse a bad name before any command runs: names reach CLIs, file paths and remote shells. */
export function validateVmName(name: unknown, provider?: string): string {
  if (typeof name !== 'string' || !VM_NAME_PATTERN.test(name)) {
    throw new VmPoolError({
      code: 'VMPOOL_INVALID_NAME',
      provider,
      message: `invalid VM name ${JSON.stringify(name)}: names must match ${VM_NAME_PATTERN.source}`,
      hint: 'use lower-case letters, digits and dashes, at most 63 characters, starting with a letter or digit',
    })
  }
  return name
}

/**
 * An image (or distro) name goes to a CLI as one argv word: refuse what a CLI would read as an option
 * (`--force`) and what cannot be a name (empty, whitespace, control characters).
 */
export function validateImageName(image: string, provider?: string): string {
  if (image === '' || image.startsWith('-') || /[\s\p{Cc}]/u.test(image)) {
    throw new VmPoolError({
      code: 'VMPOOL_INVALID_OPTIONS',
      provider,
      message: `invalid image ${JSON.stringify(image)}: an image name must not be empty, start with "-" or contain whitespace`,
    })
  }
  return image
}
