import { createHmac, timingSafeEqual } from 'node:crypto'

/**
 * GitHub's webhook signature: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body, keyed
 * with the webhook secret>`. Compared in constant time; the secret and the digests never leave here.
 */

export type SignatureCheck = 'valid' | 'missing' | 'invalid'

export function signWebhookBody(secret: string, body: Buffer | string): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`
}

export function checkWebhookSignature(secret: string, body: Buffer, header: string | string[] | undefined): SignatureCheck {
  if (header === undefined || header === '') return 'missing'
  const value = Array.isArray(header) ? header[0] ?? '' : header
  const match = /^sha256=([0-9a-f]{64})$/i.exec(value.trim())
  const expected = createHmac('sha256', secret).update(body).digest()
  // A malformed header is compared anyway (against zeros), so its handling takes the same time.
  const given = match ? Buffer.from(match[1]!, 'hex') : Buffer.alloc(expected.length)
  return timingSafeEqual(given, expected) && match ? 'valid' : 'invalid'
}
