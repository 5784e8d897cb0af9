#!/usr/bin/env bash
# The local demo: the offline test cluster (real kube-apiserver, etcd, kube-controller-manager, KubeVirt's real
# virt-api and virt-controller with the Sidecar gate on) comes up with a node that runs every VM in KubeVirt's real
# virt-launcher, libvirt and QEMU (TCG) with runpolicy's hook sidecar (test/kubevirt with the real launcher of
# test/launcher), the operator binary runs against it as the Helm chart installs it (the chart's ServiceAccount, RBAC
# and admission policies, the Deployment's args; devcluster writes them), and four VMs follow their run policies through a spec change,
# a reboot and poweroffs done inside the guests: the demo types `reboot -f` and `poweroff -f` into a guest's serial
# console (what `virtctl console` reaches), the guest's kernel resets or powers off the machine, QEMU reports it to
# the hook sidecar and the operator acts on what the sidecar recorded. Run through `make demo` (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/bin/demo
ASSETS=$(EXTRA=kubectl test/cluster/build-assets.sh)
KUBECTL="$ASSETS/kubectl --kubeconfig $DEMO/kubeconfig"
CONTROL=127.0.0.1:18080
GUEST_DIR=${GUEST_DIR:-$ROOT/bin/guest}
mkdir -p "$DEMO"
rm -f "$DEMO/kubeconfig" "$DEMO/operator.kubeconfig" "$DEMO/operator.args" "$DEMO/operator.env"
started=$SECONDS

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { $KUBECTL get rvm,vm,vmi -o wide 2>/dev/null | sed 's/^/   /'; }
waitfor() { # waitfor DESCRIPTION COMMAND...: poll for up to $WAIT s (default 60)
  local what=$1; shift
  for _ in $(seq 1 $((${WAIT:-60} * 2))); do if "$@" >/dev/null 2>&1; then return 0; fi; sleep 0.5; done
  echo "demo: timed out waiting for $what" >&2; return 1
}
phase() { [[ $($KUBECTL get rvm "$1" -o jsonpath='{.status.phase}') == "$2" ]]; }
rvm() { $KUBECTL get rvm "$1" -o jsonpath="$2"; }
novmi() { ! $KUBECTL get vmi "$1" >/dev/null 2>&1; }
recorded() { [[ $(rvm "$1" '{.status.lastShutdown.vmiUID}') == "$2" ]]; } # the operator judged that VMI's end
newvmi() { local u; u=$($KUBECTL get vmi "$1" -o jsonpath='{.metadata.uid}') && [[ -n $u && $u != "$2" ]]; }
# console VM LINE: type LINE into the serial console of VM's guest once it has booted to its shell (devcluster waits
# for the prompt: ~30-60 s of TCG boot), and print what the guest answered.
console() {
  printf '   \033[36m%s:/ #\033[0m %s\n' "$1" "$2"
  curl -sS --fail-with-body -m 400 --data-binary "$2" "http://$CONTROL/console?namespace=default&name=$1" | sed 's/^/   /'
}
MEMTOTAL='busybox mount -t proc proc /proc; busybox grep MemTotal /proc/meminfo'

step "Starting the test cluster (kube-apiserver, etcd, kube-controller-manager, KubeVirt's virt-api and virt-controller, a node running KubeVirt's real virt-launcher)"
# Built, not `go run`: the signal at the end must reach devcluster itself so that it stops the guests and the
# control plane.
go build -o bin/devcluster ./test/cmd/devcluster
SIDECAR=ghcr.io/runpolicy/hook-sidecar:dev
KUBEBUILDER_ASSETS=$ASSETS bin/devcluster --kubeconfig-out "$DEMO/kubeconfig" --control-addr $CONTROL \
  --hook-sidecar-image $SIDECAR --chart-set restartBackoff.base=2s \
  --real-launcher --guest-dir "$GUEST_DIR" --hook-sidecar-binary bin/hook-sidecar \
  >"$DEMO/devcluster.log" 2>&1 &
pids+=($!)
# KubeVirt's control plane takes 30-70 s to come up on 2 cores (its APIService and webhooks must answer).
WAIT=300 waitfor "the test cluster (see $DEMO/devcluster.log)" test -s "$DEMO/kubeconfig"

step "Starting the operator as the chart installs it: bin/runpolicy-controller with its ServiceAccount's token and the Deployment's args"
# The chart's args, then this host's listen addresses (a pod has a network of its own).
mapfile -t OPERATOR_ARGS <"$DEMO/operator.args"
mapfile -t OPERATOR_ENV <"$DEMO/operator.env"
sed 's/^/   /' "$DEMO/operator.args"
env "${OPERATOR_ENV[@]}" bin/runpolicy-controller --kubeconfig "$DEMO/operator.kubeconfig" "${OPERATOR_ARGS[@]}" \
  --metrics-bind-address=0 --health-probe-bind-address=127.0.0.1:18081 >"$DEMO/operator.log" 2>&1 &
pids+=($!)
waitfor "the operator's readiness" curl -fsS http://127.0.0.1:18081/readyz

step "Applying one VM per policy (test/demo/vms.yaml): web and db start, each in a virt-launcher pod with QEMU"
$KUBECTL apply -f test/demo/vms.yaml
WAIT=180 waitfor "web Running" phase web Running
WAIT=180 waitfor "db Running" phase db Running
waitfor "spare Stopped" phase spare Stopped
waitfor "batch Stopped" phase batch Stopped
show
echo
$KUBECTL get pods -o wide 2>/dev/null | sed 's/^/   /'

step "Inside web's guest, on its serial console: 128Mi of memory"
console web "$MEMTOTAL"

step "Changing web's memory: the running VMI needs a restart to apply it"
$KUBECTL patch rvm web --type merge -p '{"spec":{"template":{"spec":{"domain":{"memory":{"guest":"256Mi"}}}}}}'
waitfor "NEED RESTART" bash -c "[[ \$($KUBECTL get rvm web -o jsonpath='{.status.conditions[?(@.type==\"AwaitingRestartToApplyConfiguration\")].status}') == True ]]"
$KUBECTL get rvm web | sed 's/^/   /'

step "Rebooting web from inside the guest: runpolicy restarts it from outside with the new spec"
old=$($KUBECTL get vmi web -o jsonpath='{.metadata.uid}')
console web 'busybox reboot -f'
WAIT=180 waitfor "a new VMI for web" newvmi web "$old"
WAIT=180 waitfor "web Running" phase web Running
echo "   new VMI memory: $($KUBECTL get vmi web -o jsonpath='{.spec.domain.memory.guest}')," \
  "restarts: $(rvm web '{.status.restartCount}')," \
  "last shutdown: $(rvm web '{.status.lastShutdown.source} ({.status.lastShutdown.reason})')"
$KUBECTL get rvm web | sed 's/^/   /'
console web "$MEMTOTAL"

step "Powering web off from inside the guest: AlwaysOnUntilStoppedManually stays stopped"
old=$($KUBECTL get vmi web -o jsonpath='{.metadata.uid}')
console web 'busybox poweroff -f'
# The sidecar's record is read once the launcher pod's containers have exited (virt-launcher takes a few seconds).
WAIT=120 waitfor "web's poweroff recorded" recorded web "$old"
waitfor "web Stopped" phase web Stopped
waitfor "web's finished VMI deleted" novmi web
echo "   last shutdown: $(rvm web '{.status.lastShutdown.source} ({.status.lastShutdown.reason})')," \
  "restarts: $(rvm web '{.status.restartCount}'), VMI: none"
sleep 10
echo "   10 s later: phase $(rvm web '{.status.phase}'), VMI: $($KUBECTL get vmi web -o name 2>/dev/null || echo none)"

step "Powering db off from inside the guest: AlwaysOn comes back (KubeVirt's Always)"
old=$($KUBECTL get vmi db -o jsonpath='{.metadata.uid}')
console db 'busybox poweroff -f'
WAIT=180 waitfor "a new VMI for db" newvmi db "$old"
WAIT=180 waitfor "db Running" phase db Running
WAIT=60 waitfor "db's poweroff recorded" recorded db "$old"
echo "   last shutdown: $(rvm db '{.status.lastShutdown.source} ({.status.lastShutdown.reason})'), a new VMI runs;" \
  "its guest booted afresh:"
console db 'busybox mount -t proc proc /proc; busybox uptime'

step "Final state"
show
echo
$KUBECTL get events --field-selector involvedObject.kind=VirtualMachine,involvedObject.name=web \
  -o custom-columns=REASON:.reason,MESSAGE:.message 2>/dev/null | sed 's/^/   /' | tail -12
echo
echo "demo: done in $((SECONDS - started)) s (logs in bin/demo/)"
