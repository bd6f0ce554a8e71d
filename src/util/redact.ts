/**
 * Connection strings carry passwords; nothing vm-pool prints, logs, returns as JSON or throws may show one.
 * Everything that names a connection string or passes on a driver's message goes through here.
 */
const REDACTED = '***'

/** `postgres://user:secret@host/db?password=x` → `postgres://user:***@host/db?password=***`. Not a URL: returned with any `user:pass@` masked. */
export function redactConnectionString(value: string): string {
  return value
    .replace(/(\/\/[^/@:\s]*:)[^@\s]*@/g, `$1${REDACTED}@`)
    .replace(/([?&](?:password|sslpassword|sslkey)=)[^&\s]*/gi, `$1${REDACTED}`)
}

/** The password inside a connection string (URL form or `password=` parameter), decoded, or undefined. */
export function getConnectionPassword(value: string): string | undefined {
  try {
    const url = new URL(value)
    const password = url.password ? decodeURIComponent(url.password) : url.searchParams.get('password')
    return password || undefined
  } catch {
    return /(?:^|\s)password=(\S+)/.exec(value)?.[1]
  }
}

/**
 * Any text (a driver's error message, a stack) with connection strings masked and every occurrence of the
 * known secrets (raw and URL-encoded) replaced. Secrets shorter than 3 characters are masked only inside URLs.
 */
export function redactSecrets(text: string, secrets: readonly (string | undefined)[]): string {
  let out = redactConnectionString(text)
  for (const secret of secrets) {
    if (!secret || secret.length < 3) continue
    for (const form of new Set([secret, encodeURIComponent(secret)])) out = out.split(form).join(REDACTED)
  }
  return out
}
