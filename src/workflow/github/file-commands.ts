/**
 * GitHub's file commands, as pure functions: after each `run:` step the runner reads back the files
 * the step may have appended to — GITHUB_ENV, GITHUB_OUTPUT, GITHUB_PATH, GITHUB_STEP_SUMMARY — and
 * empties them. This module builds the one shell command that does
 * that in the VM, splits its output, and parses each file the way GitHub's runner does
 * (docs/workflows.md, "In the VM"):
 *   NAME=value            one line; the first `=` ends the name (when it comes before any `<<`)
 *   NAME<<DELIMITER       the lines up to a line that is exactly DELIMITER, joined with \n
 *   (blank line)          ignored
 * Lines may end in \r\n. Anything else fails the step with a message naming the file and line.
 */

/** Bytes read back of each file; a step that wrote more fails (a runaway `>> "$GITHUB_ENV"`, a binary). */
export const FILE_COMMAND_MAX_BYTES = 1024 * 1024

/** The files, in the order the read-back prints them. */
export const FILE_COMMAND_FILES = ['env', 'output', 'path', 'summary'] as const
export type FileCommandFile = (typeof FILE_COMMAND_FILES)[number]

const VARIABLE = { env: 'GITHUB_ENV', output: 'GITHUB_OUTPUT', path: 'GITHUB_PATH', summary: 'GITHUB_STEP_SUMMARY' } as const

/** What one step wrote: later lines of a name win. */
export interface FileCommands {
  env: Record<string, string>
  output: Record<string, string>
  /** Directories in the order they were written. */
  path: string[]
  /** The step's summary (Markdown, as written), '' when it wrote none. */
  summary: string
}

/** Thrown for a file the step wrote wrong; the step fails with this message. */
export class FileCommandError extends Error {
  override name = 'FileCommandError'
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/

/**
 * The shell command (sh, busybox included) that prints each file's first `maxBytes + 1` bytes followed
 * by a NUL, then empties them. A file a step removed counts as empty and is made again. NUL cannot
 * be written to a file through `echo`/`printf` by accident, so it frames the files safely; a file that
 * does hold one is refused by `splitReadBack`.
 */
export function makeReadBackCommand(quotedDir: string, maxBytes = FILE_COMMAND_MAX_BYTES): string {
  return [
    `cd ${quotedDir} || exit 1`,
    `for f in env output path summary; do [ -f "$f" ] || : > "$f" || exit 1; done`,
    `for f in ${FILE_COMMAND_FILES.join(' ')}; do head -c ${maxBytes + 1} "$f" || exit 1; printf '\\0'; done`,
    `: > env && : > output && : > path && : > summary`,
  ].join('\n')
}

/** The read-back's stdout, split into the four files' texts. Throws `FileCommandError`. */
export function splitReadBack(stdout: string, maxBytes = FILE_COMMAND_MAX_BYTES): Record<FileCommandFile, string> {
  const parts = stdout.split('\0')
  if (parts.length !== FILE_COMMAND_FILES.length + 1 || parts.at(-1) !== '') {
    throw new FileCommandError(`could not read back ${FILE_COMMAND_FILES.map((file) => VARIABLE[file]).join(', ')}: expected ${FILE_COMMAND_FILES.length} files, got ${parts.length - 1} parts (does one hold a NUL byte?)`)
  }
  const files = {} as Record<FileCommandFile, string>
  FILE_COMMAND_FILES.forEach((file, index) => {
    const text = parts[index]!
    if (Buffer.byteLength(text) <= maxBytes) files[file] = text
    // A summary too big is GitHub's to refuse (it shows none, the step does not fail): its head is shown here.
    else if (file === 'summary') files[file] = `${Buffer.from(text).subarray(0, maxBytes).toString()}\n… (the step wrote more than ${maxBytes} bytes to ${VARIABLE[file]}: the rest is not read back)\n`
    else throw new FileCommandError(`${VARIABLE[file]}: the step wrote more than ${maxBytes} bytes to it, the most vm-pool reads back`)
  })
  return files
}

/** All four files of one step, parsed (the summary is kept as written). Throws `FileCommandError`. */
export function parseFileCommands(files: Record<FileCommandFile, string>): FileCommands {
  return { env: parseKeyValueFile(files.env, 'env'), output: parseKeyValueFile(files.output, 'output'), path: parsePathFile(files.path), summary: files.summary }
}

/** GITHUB_ENV or GITHUB_OUTPUT: `NAME=value` and `NAME<<DELIMITER` blocks. Throws `FileCommandError`. */
export function parseKeyValueFile(text: string, file: 'env' | 'output'): Record<string, string> {
  const lines = splitLines(text)
  const values: Record<string, string> = {}
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index]!
    if (line.trim() === '') continue
    const where = `${VARIABLE[file]} line ${index + 1}`
    const equals = line.indexOf('=')
    const heredoc = line.indexOf('<<')
    let name: string
    let value: string
    if (equals >= 0 && (heredoc < 0 || equals < heredoc)) {
      name = line.slice(0, equals)
      value = line.slice(equals + 1)
    } else if (heredoc >= 0) {
      name = line.slice(0, heredoc)
      const delimiter = line.slice(heredoc + 2)
      if (delimiter === '') throw new FileCommandError(`${where}: ${quote(line)}: the delimiter after << is empty`)
      const end = lines.indexOf(delimiter, index + 1)
      if (end < 0) throw new FileCommandError(`${where}: ${quote(line)}: no line ${quote(delimiter)} ends this multi-line value`)
      value = lines.slice(index + 1, end).join('\n')
      index = end
    } else {
      throw new FileCommandError(`${where}: ${quote(line)}: expected NAME=value or NAME<<DELIMITER`)
    }
    checkName(name, file, where, line)
    values[name] = value
  }
  return values
}

/** GITHUB_PATH: one directory a line, blank lines ignored. */
export function parsePathFile(text: string): string[] {
  return splitLines(text).filter((line) => line.trim() !== '')
}

/** The PATH prefix after a step added `added`: the most recently added first, each directory once. */
export function addToPath(current: readonly string[], added: readonly string[]): string[] {
  let path = [...current]
  for (const dir of added) path = [dir, ...path.filter((existing) => existing !== dir)]
  return path
}

function checkName(name: string, file: 'env' | 'output', where: string, line: string): void {
  if (name === '') throw new FileCommandError(`${where}: ${quote(line)}: the name is empty`)
  // Names go into the step's environment, so they must be names `sh` can export.
  if (file === 'env' && !ENV_NAME.test(name)) throw new FileCommandError(`${where}: invalid environment variable name ${quote(name)}: use letters, digits and _, not starting with a digit`)
}

function splitLines(text: string): string[] {
  const lines = text.split('\n').map((line) => (line.endsWith('\r') ? line.slice(0, -1) : line))
  if (lines.at(-1) === '') lines.pop()
  return lines
}

function quote(text: string): string {
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 79)}…` : text)
}
