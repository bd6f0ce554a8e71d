#!/usr/bin/env bash
# A vm-pool protocol client in bash (docs/protocol.md): lease a VM, stream a command's output, copy a
# file in and out (base64), drain. Needs bash >= 4.3, jq, GNU base64, and vm-pool:
#   VM_POOL_HELPER   the vm-pool command (default: npx --no vm-pool)
#   VM_POOL_PROVIDER the provider (default: qemu; `fake` needs no VM at all)
set -euo pipefail

read -r -a helper <<<"${VM_POOL_HELPER:-npx --no vm-pool}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The helper reads requests on its stdin and answers on its stdout; it watches this shell (--parent-pid)
# and deletes the VMs if the shell dies without draining.
coproc HELPER { exec "${helper[@]}" protocol --parent-pid $$; }
helper_in=${HELPER[1]}
helper_out=${HELPER[0]}

next_id=0
REPLY=''
# request OP [PARAMS-JSON]: send it; print streamed output as it comes; leave the result in $REPLY.
# An error answer prints `error: CODE: message (hint: ...)` and fails.
request() {
  local op=$1 params=${2:-'{}'} id=$((next_id += 1)) line kind
  jq -cn --argjson id "$id" --arg op "$op" --argjson params "$params" '{id: $id, op: $op} + $params' >&"$helper_in"
  while IFS= read -r line <&"$helper_out"; do
    [ "$(jq -r '.id' <<<"$line")" = "$id" ] || continue
    kind=$(jq -r 'if .event then "event" elif .ok then "ok" else "error" end' <<<"$line")
    case $kind in
      event) jq -j '.data' <<<"$line" ;;
      ok) REPLY=$(jq -c '.result' <<<"$line"); return 0 ;;
      *) jq -r '"error: \(.error.code): \(.error.message)" + (if .error.hint then " (hint: \(.error.hint))" else "" end)' <<<"$line" >&2; return 1 ;;
    esac
  done
  echo "error: the helper exited" >&2
  return 1
}

request hello "$(jq -cn --arg provider "${VM_POOL_PROVIDER:-qemu}" '{protocol: 1, client: "examples/protocol/client.sh", pool: {provider: $provider}}')"
echo "helper: vm-pool $(jq -r .version <<<"$REPLY") on Node.js $(jq -r .node <<<"$REPLY"), provider $(jq -r .provider <<<"$REPLY")"

request acquire '{"key": "demo"}'
vm=$(jq -r .vm <<<"$REPLY")
echo "leased $vm"

# Streamed: the lines appear while the command runs; the result has them too.
request exec "$(jq -cn --arg vm "$vm" '{vm: $vm, command: "uname -s; for i in 1 2 3; do echo tick $i; sleep 0.2; done", stream: true}')"
echo "exit code $(jq .exitCode <<<"$REPLY") after $(jq .durationMs <<<"$REPLY") ms"

# argv: each word arrives as one argument, whatever it contains.
request exec "$(jq -cn --arg vm "$vm" '{vm: $vm, command: ["printf", "[%s]\\n", "two words", "$HOME", "it'"'"'s"]}')"
jq -j .stdout <<<"$REPLY"

# Files travel as base64 in the JSON (or by path: {"localPath": ...}, read by the helper itself).
head -c 3000 /dev/urandom >"$work/in.bin"
request putFile "$(jq -cn --arg vm "$vm" --arg data "$(base64 -w0 "$work/in.bin")" '{vm: $vm, path: "in.bin", data: $data}')"
request exec "$(jq -cn --arg vm "$vm" '{vm: $vm, command: "wc -c < in.bin"}')"
echo "in the VM: $(jq -r .stdout <<<"$REPLY" | tr -d ' \n') bytes"
request getFile "$(jq -cn --arg vm "$vm" '{vm: $vm, path: "in.bin"}')"
jq -r .data <<<"$REPLY" | base64 -d >"$work/out.bin"
cmp -s "$work/in.bin" "$work/out.bin" && echo "round trip ok"

# An error answer: exec in a VM this helper does not hold.
request exec '{"vm": "no-such-vm", "command": "true"}' || true

request drain
echo "drained: $(jq -c .stats <<<"$REPLY")"
exec {helper_in}>&-
wait "$HELPER_PID"
