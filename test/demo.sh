#!/usr/bin/env bash
# The local demo, on a real node: the offline test cluster (real kube-apiserver, etcd, kube-controller-manager,
# KubeVirt's real virt-api and virt-controller with the Sidecar gate on) with a real node (containerd, kubelet,
# kube-proxy, kube-scheduler) running KubeVirt's real virt-handler, its launcher pods with libvirt and QEMU (TCG);
# `make images` imported into the node (no registry). The chart is installed with `helm install`, as a user does:
# the operator runs as its pods. Four VMs follow their run policies through a spec change, a reboot and poweroffs
# done inside the guests: the demo types `reboot -f` and `poweroff -f` into a guest's serial console with
# `virtctl console` (devcluster's /console), the guest's kernel resets or powers off the machine, QEMU reports it to
# runpolicy's hook sidecar in the launcher pod, the kubelet publishes the sidecar's termination message and the
# operator pod acts on it. Run through `make demo` (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/bin/demo
ASSETS=$(EXTRA="kubectl kube-controller-manager kubelet kube-proxy kube-scheduler" test/cluster/build-assets.sh)
HELM=${HELM:-$ROOT/bin/tools/helm}
KUBECTL="$ASSETS/kubectl --kubeconfig $DEMO/kubeconfig"
CONTROL=127.0.0.1:18080
GUEST_DIR=${GUEST_DIR:-$ROOT/bin/guest}
mkdir -p "$DEMO"
rm -f "$DEMO/kubeconfig"
started=$SECONDS

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { $KUBECTL get rvm,vm,vmi -o wide 2>/dev/null | sed 's/^/   /'; }
pods() { $KUBECTL get pods -A -o wide 2>/dev/null | sed 's/^/   /'; }
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
# console VM LINE: type LINE into the serial console of VM's guest with `virtctl console` once it has booted to its
# shell (devcluster presses Enter until it prompts: ~30-60 s of TCG boot), and print what the guest answered.
console() {
  printf '   \033[36m[virtctl console %s] / #\033[0m %s\n' "$1" "$2"
  curl -sS --fail-with-body -m 400 --data-binary "$2" "http://$CONTROL/console?namespace=default&name=$1" | sed 's/^/   /'
}
MEMTOTAL='busybox mount -t proc proc /proc; busybox grep MemTotal /proc/meminfo'

step "Starting the test cluster with a real node: KubeVirt's control plane, the node's containerd, kubelet, kube-proxy and kube-scheduler, KubeVirt's virt-handler; make images imported into the node"
# Built, not `go run`: the signal at the end must reach devcluster itself so that it stops the node and the
# control plane.
go build -o bin/devcluster ./test/cmd/devcluster
KUBEBUILDER_ASSETS=$ASSETS bin/devcluster --real-node --kubeconfig-out "$DEMO/kubeconfig" --control-addr $CONTROL \
  --import bin/images/runpolicy-controller.tar --import bin/images/runpolicy-hook-sidecar.tar \
  --guest-dir "$GUEST_DIR" --guest-image runpolicy.test/tiny-guest:dev >"$DEMO/devcluster.log" 2>&1 &
devcluster=$!
pids+=($devcluster)
# KubeVirt's control plane takes 30-70 s to come up on 2 cores (its APIService and webhooks must answer), the node
# ~30 s more; the first run also builds KubeVirt's node images (~10 min).
WAIT=1200 waitfor "the test cluster (see $DEMO/devcluster.log)" bash -c \
  "test -s '$DEMO/kubeconfig' || { kill -0 $devcluster || { tail -3 '$DEMO/devcluster.log' >&2; exit 0; }; exit 1; }"
kill -0 $devcluster 2>/dev/null || { echo "demo: the test cluster did not start (see $DEMO/devcluster.log)" >&2; exit 1; }
WAIT=180 waitfor "virt-handler to mark the node schedulable" bash -c \
  "$KUBECTL get nodes -l kubevirt.io/schedulable=true -o name | grep -q ."
$KUBECTL get nodes -o wide | sed 's/^/   /'

step "helm install runpolicy charts/runpolicy: the operator as pods (two replicas, leader election)"
echo "   helm install runpolicy charts/runpolicy --namespace runpolicy-system --create-namespace --wait --set restartBackoff.base=2s"
"$HELM" --kubeconfig "$DEMO/kubeconfig" install runpolicy charts/runpolicy --namespace runpolicy-system \
  --create-namespace --wait --timeout 5m --set restartBackoff.base=2s | sed 's/^/   /'
pods

step "Applying one VM per policy (test/demo/vms.yaml): web and db start, each in a virt-launcher pod with QEMU"
$KUBECTL apply -f test/demo/vms.yaml
WAIT=180 waitfor "web Running" phase web Running
WAIT=180 waitfor "db Running" phase db Running
waitfor "spare Stopped" phase spare Stopped
waitfor "batch Stopped" phase batch Stopped
show
echo
pods

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
pods
echo
$KUBECTL get events --field-selector involvedObject.kind=VirtualMachine,involvedObject.name=web \
  -o custom-columns=REASON:.reason,MESSAGE:.message 2>/dev/null | sed 's/^/   /' | tail -12
echo
echo "demo: done in $((SECONDS - started)) s (logs in bin/demo/)"
