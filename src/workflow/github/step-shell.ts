import { quoteShellArg } from '../../transport/shell.js'

/**
 * `shell:` of a `run:` step, turned into the one shell line vm-pool executes in the VM, with GitHub's
 * command lines for the built-in shells (docs: "jobs.<job_id>.steps[*].shell"):
 *   unset   bash -e {0}, or sh -e {0} when the VM has no bash (the minimal image is busybox)
 *   bash    bash --noprofile --norc -eo pipefail {0}
 *   sh      sh -e {0}
 *   python  python3 {0}
 *   custom  any command line with {0}, the path of the script file
 */

const UNSUPPORTED_SHELLS = ['pwsh', 'powershell', 'cmd']

/** `uses: actions/checkout@<any ref>`: the one action vm-pool performs itself. */
export function isCheckout(uses: string): boolean {
  return /^actions\/checkout@\S+$/i.test(uses.trim())
}

/** The `with:` inputs vm-pool's checkout honours; others are warned about. */
export const CHECKOUT_INPUTS = ['path']

/** A problem with a `shell:` value, or undefined when vm-pool can run it. */
export function checkShell(shell: string): string | undefined {
  const name = shell.trim()
  if (UNSUPPORTED_SHELLS.includes(name)) return `${name} is not supported on vm-pool's Linux VMs: use bash, sh, python or a command with {0}`
  if (['bash', 'sh', 'python'].includes(name)) return undefined
  if (!name.includes('{0}')) return `a custom shell must contain {0} (where the script file goes), e.g. "perl {0}"; built in: bash, sh, python`
  return undefined
}

/**
 * The shell line that runs `script` with `shell` (validated by `checkShell`), with `pathPrefix` (the
 * GITHUB_PATH directories, first first) put before the guest's own PATH, which only the guest knows.
 */
export function buildStepCommand(script: string, shell: string | undefined, pathPrefix: readonly string[] = []): string {
  if (pathPrefix.length === 0) return shellCommand(script, shell)
  return `PATH=${pathPrefix.map(quoteShellArg).join(':')}:"$PATH"; export PATH\n${shellCommand(script, shell)}`
}

function shellCommand(script: string, shell: string | undefined): string {
  const quoted = quoteShellArg(script)
  if (shell === undefined) return `s=${quoted}\nif command -v bash >/dev/null 2>&1; then exec bash -e -c "$s"; fi\nexec sh -e -c "$s"`
  switch (shell.trim()) {
    case 'bash':
      return `exec bash --noprofile --norc -eo pipefail -c ${quoted}`
    case 'sh':
      return `exec sh -e -c ${quoted}`
    case 'python':
      return viaScriptFile(quoted, 'python3 {0}')
    default:
      return viaScriptFile(quoted, shell)
  }
}

/** Shells that read a file: write the script to a temporary file, run, remove it, keep the exit code. */
function viaScriptFile(quotedScript: string, template: string): string {
  const command = template.replaceAll('{0}', '"$f"')
  return `f=$(mktemp) || exit 1\nprintf '%s\\n' ${quotedScript} > "$f"\n${command}\nrc=$?\nrm -f "$f"\nexit $rc`
}
