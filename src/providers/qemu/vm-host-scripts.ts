/**
 * The shell scripts a VM host runs for the QEMU provider (docs/providers.md, "QEMU on a VM host"): plain
 * POSIX sh with coreutils and grep, because nothing but QEMU and the image is installed there. Each one
 * takes its values as positional arguments (`sh -c SCRIPT sh ARG...`), never spliced into the text.
 * A QEMU of a VM dir is known by its command line: `-pidfile <dir>/qemu.pid` (qemu-command.ts), as the
 * local provider's scan does (qemu-process-scan.ts).
 */
import { INSTANCE_FILES, VM_DIR_FILES } from './qemu-vm-dir.js'

const PID = VM_DIR_FILES.pid
const RECORD = VM_DIR_FILES.record

/**
 * `qemu_pids PIDFILE`: the pids whose argv has `-pidfile PIDFILE`. grep preselects (its own argv holds
 * the path too, but never after `-pidfile`, so the `case` drops it); `tr` makes argv one line.
 */
const QEMU_PIDS = `qemu_pids() {
  for c in $(grep -laF -- "$1" /proc/[0-9]*/cmdline 2>/dev/null); do
    line=$(tr '\\0' ' ' < "$c" 2>/dev/null) || continue
    case " $line" in *" -pidfile $1 "*) p=\${c#/proc/}; echo "\${p%/cmdline}";; esac
  done
}`

/**
 * `$1` root, `$2` VM dir, `$3` the image's client key, then the image's other files: check they exist
 * (`missing<TAB>path` on stderr, exit 3), make the dir (exit 17 when it exists), copy the key, print it.
 */
export const PREPARE_VM_DIR_SCRIPT = `set -e
root=$1 dir=$2 key=$3
shift 2
for f in "$@"; do [ -e "$f" ] || { printf 'missing\t%s\n' "$f" >&2; exit 3; }; done
mkdir -p -m 700 -- "$root"
if ! mkdir -m 700 -- "$dir" 2>/dev/null; then [ -d "$dir" ] && exit 17; mkdir -m 700 -- "$dir"; fi
cp -- "$key" "$dir/${VM_DIR_FILES.clientKey}"
chmod 600 "$dir/${VM_DIR_FILES.clientKey}"
cat -- "$dir/${VM_DIR_FILES.clientKey}"`

/** Exit code of LAUNCH_SCRIPT when QEMU daemonized but its pid file is gone: it exited at once (a rejected restore). */
export const LAUNCH_EXITED_AT_ONCE = 98

/** `$1` pid file, then QEMU's argv: start it (it daemonizes) and print the pid it wrote. */
export const LAUNCH_SCRIPT = `pidfile=$1; shift
"$@" || exit $?
cat -- "$pidfile" 2>/dev/null || exit ${LAUNCH_EXITED_AT_ONCE}`

/**
 * `$1` snapshot slot dir, `$2` seconds after which a lock is taken over: take the slot's build lock
 * (`$1.lock`, a directory: mkdir is atomic); exit 75 while someone else holds it.
 */
export const LOCK_SLOT_SCRIPT = `mkdir -p -m 700 -- "$1"
mkdir -- "$1.lock" 2>/dev/null && exit 0
age=$(( $(date +%s) - $(stat -c %Y -- "$1.lock" 2>/dev/null || date +%s) ))
if [ "$age" -gt "$2" ]; then rm -rf -- "$1.lock"; mkdir -- "$1.lock" 2>/dev/null && exit 0; fi
exit 75`

/** `$1` slot dir: its manifest, when the state file of the id it names is there too (exit 3 otherwise). */
export const READ_SNAPSHOT_SCRIPT = `[ -f "$1/snapshot.json" ] || exit 3
id=$(sed -n 's/.*"id":"\\([0-9a-f]*\\)".*/\\1/p' "$1/snapshot.json")
[ -n "$id" ] && [ -f "$1/state-$id" ] || exit 3
cat -- "$1/snapshot.json"`

/**
 * `$1` slot dir, `$2` snapshot id, `$3` manifest JSON: the saved state becomes the slot's snapshot, and the
 * states of the ones before it go (a restore that already opened one keeps reading it).
 */
export const COMMIT_SNAPSHOT_SCRIPT = `mv -f -- "$1/state.partial" "$1/state-$2" || exit $?
printf %s "$3" > "$1/snapshot.json.tmp" && mv -f -- "$1/snapshot.json.tmp" "$1/snapshot.json" || exit $?
for old in "$1"/state-*; do [ "$old" = "$1/state-$2" ] || rm -f -- "$old"; done
exit 0`

/** `$1` slot dir, `$2` snapshot id: forget that snapshot (only if it is still the slot's one). */
export const INVALIDATE_SNAPSHOT_SCRIPT = 'grep -qF -- "\\"id\\":\\"$2\\"" "$1/snapshot.json" 2>/dev/null && rm -f -- "$1/snapshot.json"; exit 0'

/** `$1` pid, `$2` pid file: exit 0 while that pid is the QEMU started with that pid file. */
export const IS_ALIVE_SCRIPT = `[ -r "/proc/$1/cmdline" ] || exit 1
case " $(tr '\\0' ' ' < "/proc/$1/cmdline" 2>/dev/null)" in *" -pidfile $2 "*) exit 0;; esac
exit 1`

/** `$1` file, `$2` text: exit 0 when the file holds the text. */
export const HAS_LINE_SCRIPT = 'grep -qF -- "$2" "$1" 2>/dev/null'

/** `$1` file, `$2` lines: its last non-empty lines. */
export const TAIL_SCRIPT = `[ -f "$1" ] || exit 3
tail -c 16384 -- "$1" | tr -d '\\r' | grep -v '^[[:space:]]*$' | tail -n "$2"`

/** `$1` path: write stdin there atomically (a temp file beside it, then rename). */
export const WRITE_FILE_SCRIPT = 'cat > "$1.tmp.$$" && mv -f -- "$1.tmp.$$" "$1"'

/**
 * `$1` VM dir, `$2` SIGTERM grace in tenths of a second, `$3` `dir` or `instance`: stop every QEMU of that
 * dir (SIGTERM: QEMU shuts the machine down; SIGKILL after the grace), then remove the dir, or only what one
 * QEMU run leaves in it (a reset or a second restore attempt keeps the key and the record). Exit 2 when one
 * survives SIGKILL.
 */
export const STOP_QEMU_SCRIPT = `${QEMU_PIDS}
pf="$1/${PID}"
wait_gone() { i=0; while [ -n "$(qemu_pids "$pf")" ]; do [ $i -ge "$1" ] && return 1; sleep 0.1; i=$((i+1)); done; }
pids=$(qemu_pids "$pf")
if [ -n "$pids" ]; then
  kill -TERM $pids 2>/dev/null
  if ! wait_gone "$2"; then
    kill -KILL $(qemu_pids "$pf") 2>/dev/null
    wait_gone 50 || { echo "QEMU $(qemu_pids "$pf" | tr '\\n' ' ')is still alive 5 s after SIGKILL" >&2; exit 2; }
  fi
fi
if [ "$3" = dir ]; then rm -rf -- "$1"; else rm -f -- ${INSTANCE_FILES.map((file) => `"$1/${VM_DIR_FILES[file]}"`).join(' ')}; fi`

/**
 * `$1` root (`<hostStateDir>/qemu`): one line per VM dir, `vm<TAB>name<TAB>alive 0|1<TAB>record.json
 * in base64 (empty without one)`, then `orphan<TAB>name<TAB>pid file` for each QEMU whose pid file is
 * under root while its dir is gone.
 */
export const LIST_VMS_SCRIPT = `${QEMU_PIDS}
for d in "$1"/*/; do
  [ -d "$d" ] || continue
  n=\${d%/}; n=\${n##*/}
  alive=0; [ -n "$(qemu_pids "$1/$n/${PID}")" ] && alive=1
  rec=; [ -f "$1/$n/${RECORD}" ] && rec=$(base64 -w0 < "$1/$n/${RECORD}")
  printf 'vm\\t%s\\t%s\\t%s\\n' "$n" "$alive" "$rec"
done
for c in $(grep -laF -- "$1/" /proc/[0-9]*/cmdline 2>/dev/null); do
  line=$(tr '\\0' ' ' < "$c" 2>/dev/null) || continue
  case " $line" in *" -pidfile $1/"*) ;; *) continue;; esac
  rest=\${line#*" -pidfile $1/"}; pf=\${rest%% *}; n=\${pf%%/*}
  [ -d "$1/$n" ] || printf 'orphan\\t%s\\t%s\\n' "$n" "$pf"
done`

/** `$1` image dir, `$2` the QEMU binary: print the image's manifest (exit 4: no such binary, 3: no manifest). */
export const READ_IMAGE_SCRIPT = `command -v "$2" >/dev/null 2>&1 || exit 4
[ -f "$1/manifest.json" ] || exit 3
cat -- "$1/manifest.json"`

/**
 * `$1` QEMU binary, `$2` kernel, `$3` cache file, `$4` seconds a test boot may take: is KVM usable there?
 * A test boot with no root file system reaches the kernel's panic within a second under a working KVM
 * (accel-probe.ts does the same here); coreutils `timeout` ends a hung one. Prints the verdict, cached in
 * `$3` until the host reboots (its boot id), so each runner does not pay a hung test boot again.
 */
export const PROBE_KVM_SCRIPT = `key="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null) $1 $2"
if [ -f "$3" ] && [ "$(head -n 1 "$3")" = "$key" ]; then tail -n 1 "$3"; exit 0; fi
if ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ]; then verdict='no usable /dev/kvm'
elif timeout "$4" "$1" -accel kvm -cpu host -m 128 -nodefaults -display none -no-reboot -kernel "$2" -append 'console=ttyS0 panic=-1 loglevel=1' -serial stdio 2>&1 | grep -q 'Kernel panic'; then verdict=kvm
else verdict='a KVM test boot failed or hung'; fi
mkdir -p -m 700 -- "\${3%/*}" && printf '%s\\n%s\\n' "$key" "$verdict" > "$3.tmp.$$" && mv -f -- "$3.tmp.$$" "$3"
echo "$verdict"`
