/**
 * Text from users and providers (workflow and step names, commands, VM names a provider lists, input quoted
 * in an error) reaches terminals and logs. A raw `\n` or `\r` in it can forge a whole line — a workflow
 * named `x\nvm-pool run: 1 workflow, 1 succeeded` — and escape sequences can rewrite the screen. Every place
 * that prints such text passes it through `printable` first: control characters become visible escapes.
 */

/** C0 controls (tab included), DEL, C1 controls, and the Unicode line and paragraph separators. */
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g
/** The same, but line feeds and tabs stay: for text that is meant to span lines (error messages, command output). */
const CONTROL_CHARACTERS_BUT_LINE_BREAKS = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029]/g

const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t', '\u001b': '\\e' }

function escape(character: string): string {
  return NAMED[character] ?? `\\u${character.charCodeAt(0).toString(16).padStart(4, '0')}`
}

/**
 * `printable('a\nb')` → `a\\nb` (one line). With `multiline`, line feeds and tabs stay (an error message with
 * its hint on the next line) and everything else is escaped — a lone `\r` cannot overwrite the line before it.
 */
export function printable(text: string, options: { multiline?: boolean } = {}): string {
  return text.replace(options.multiline ? CONTROL_CHARACTERS_BUT_LINE_BREAKS : CONTROL_CHARACTERS, escape)
}
