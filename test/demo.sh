#!/usr/bin/env bash
# The local demo: the offline test cluster (real kube-apiserver, etcd, kube-controller-manager, KubeVirt's real
# virt-api and virt-controller with the Sidecar gate on, a simulated node) comes up, the operator binary runs
# against it, and four VMs follow their run policies through a spec change, a reboot and a poweroff inside the
# guest. The guests are the simulated node's (test/kubevirt): their reboot and poweroff end the launcher pod with
# the hook sidecar's termination message, as real virt-launcher and QEMU would. Run through `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/bin/demo
ASSETS=$(EXTRA=kubectl test/cluster/build-assets.sh)
KUBECTL="$ASSETS/kubectl --kubeconfig $DEMO/kubeconfig"
CONTROL=127.0.0.1:18080
mkdir -p "$DEMO"
rm -f "$DEMO/kubeconfig"

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
guest() { curl -fsS -X POST "http://$CONTROL/guest/$1?namespace=default&name=$2" >/dev/null; }

step "Starting the test cluster (kube-apiserver, etcd, kube-controller-manager, KubeVirt's virt-api and virt-controller, a simulated node)"
# Built, not `go run`: the signal at the end must reach devcluster itself so that it stops the control plane.
go build -o bin/devcluster ./test/cmd/devcluster
SIDECAR=ghcr.io/runpolicy/hook-sidecar:dev
KUBEBUILDER_ASSETS=$ASSETS bin/devcluster --kubeconfig-out "$DEMO/kubeconfig" --control-addr $CONTROL \
  --hook-sidecar-image $SIDECAR >"$DEMO/devcluster.log" 2>&1 &
pids+=($!)
# KubeVirt's control plane takes 30-70 s to come up on 2 cores (its APIService and webhooks must answer).
WAIT=300 waitfor "the test cluster (see $DEMO/devcluster.log)" test -s "$DEMO/kubeconfig"

step "Starting the operator: bin/runpolicy-controller"
bin/runpolicy-controller --kubeconfig "$DEMO/kubeconfig" --leader-elect=false --metrics-bind-address=0 \
  --health-probe-bind-address=127.0.0.1:18081 --hook-sidecar-image=$SIDECAR \
  --restart-backoff-base=2s >"$DEMO/operator.log" 2>&1 &
pids+=($!)
waitfor "the operator's readiness" curl -fsS http://127.0.0.1:18081/readyz

step "Applying one VM per policy (test/demo/vms.yaml)"
$KUBECTL apply -f test/demo/vms.yaml
waitfor "web Running" phase web Running
waitfor "db Running" phase db Running
waitfor "spare Stopped" phase spare Stopped
waitfor "batch Stopped" phase batch Stopped
show

step "Changing web's memory: the running VMI needs a restart to apply it"
$KUBECTL patch rvm web --type merge -p '{"spec":{"template":{"spec":{"domain":{"memory":{"guest":"256Mi"}}}}}}'
waitfor "NEED RESTART" bash -c "[[ \$($KUBECTL get rvm web -o jsonpath='{.status.conditions[?(@.type==\"AwaitingRestartToApplyConfiguration\")].status}') == True ]]"
$KUBECTL get rvm web | sed 's/^/   /'

step "Rebooting web from inside the guest: runpolicy restarts it from outside with the new spec"
old=$($KUBECTL get vmi web -o jsonpath='{.metadata.uid}')
guest reboot web
waitfor "a new VMI for web" bash -c "u=\$($KUBECTL get vmi web -o jsonpath='{.metadata.uid}'); [[ -n \$u && \$u != $old ]]"
waitfor "web Running" phase web Running
echo "   new VMI memory: $($KUBECTL get vmi web -o jsonpath='{.spec.domain.memory.guest}')," \
  "restarts: $($KUBECTL get rvm web -o jsonpath='{.status.restartCount}')," \
  "last shutdown: $($KUBECTL get rvm web -o jsonpath='{.status.lastShutdown.source}')"
$KUBECTL get rvm web | sed 's/^/   /'

step "Powering web off from inside the guest: AlwaysOnUntilStoppedManually stays stopped"
guest poweroff web
waitfor "web Stopped" phase web Stopped
echo "   last shutdown: $($KUBECTL get rvm web -o jsonpath='{.status.lastShutdown.source}')"

step "Powering db off from inside the guest: AlwaysOn comes back (KubeVirt's Always)"
old=$($KUBECTL get vmi db -o jsonpath='{.metadata.uid}')
guest poweroff db
waitfor "a new VMI for db" bash -c "u=\$($KUBECTL get vmi db -o jsonpath='{.metadata.uid}'); [[ -n \$u && \$u != $old ]]"
waitfor "db Running" phase db Running

step "Final state"
show
echo
$KUBECTL get events --field-selector involvedObject.kind=VirtualMachine,involvedObject.name=web \
  -o custom-columns=REASON:.reason,MESSAGE:.message 2>/dev/null | sed 's/^/   /' | tail -12
echo
echo "demo: done (logs in bin/demo/)"
