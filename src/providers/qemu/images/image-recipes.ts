import { VmPoolError, invalidOptions } from '../../../errors.js'
import { buildMinimalImage } from '../image-builder.js'
import { DEFAULT_IMAGE_NAME } from '../qemu-image.js'
import { DEBIAN_IMAGE_NAME, buildDebianImage, type BuildDebianImageOptions } from './debian-image-builder.js'
import type { BuildImageResult } from './image-build-slot.js'
import { listImageNames } from './image-store.js'

/** What `vm-pool image build [RECIPE]` can build. */
export const IMAGE_RECIPES = [DEFAULT_IMAGE_NAME, DEBIAN_IMAGE_NAME] as const
export type ImageRecipe = (typeof IMAGE_RECIPES)[number]

/**
 * Build the image a recipe makes: `minimal` (the default) or `debian-12`. An unknown recipe is
 * refused with the recipes and the images that exist; options only the Debian recipe has are refused
 * for `minimal` instead of being ignored.
 */
export async function buildImage(recipe: string = DEFAULT_IMAGE_NAME, options: BuildDebianImageOptions): Promise<BuildImageResult> {
  if (recipe === DEFAULT_IMAGE_NAME) {
    const debianOnly = (['packages', 'script', 'cloudInit', 'name'] as const).filter((key) => options[key] !== undefined && options[key] !== false && !(key === 'name' && options.name === DEFAULT_IMAGE_NAME))
    if (debianOnly.length > 0) throw invalidOptions(`${debianOnly.join(', ')} ${debianOnly.length === 1 ? 'is' : 'are'} for the ${DEBIAN_IMAGE_NAME} recipe, not for ${DEFAULT_IMAGE_NAME}`, { provider: 'qemu', operation: 'image build' })
    return buildMinimalImage(options)
  }
  if (recipe === DEBIAN_IMAGE_NAME) return buildDebianImage(options)
  const existing = await listImageNames(options.imageDir)
  throw new VmPoolError({
    code: 'VMPOOL_INVALID_OPTIONS',
    provider: 'qemu',
    operation: 'image build',
    message: `unknown image recipe ${JSON.stringify(recipe)}: the recipes are ${IMAGE_RECIPES.join(', ')}; images in ${options.imageDir}: ${existing.length > 0 ? existing.join(', ') : 'none'}`,
    hint: 'a downloaded cloud image is added with `vm-pool image import NAME --disk FILE.qcow2`',
  })
}
