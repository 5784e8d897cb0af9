package vm

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/policy"
	"github.com/runpolicy/runpolicy/internal/startgate"
)

// firstStart tells whether applying the KubeVirt VM with strategy would start the VM: it moves a KubeVirt VM of
// runpolicy's (or a new one) onto runStrategy Always while no VMI runs. That is the start of a VM created with
// AlwaysOn or AlwaysOnUntilStoppedManually, or moved to one of them while stopped.
func firstStart(vm *v1alpha1.VirtualMachine, kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance,
	strategy, current kvv1.VirtualMachineRunStrategy) bool {
	if strategy != kvv1.RunStrategyAlways || policy.VMIActive(vmi) {
		return false
	}
	return kv == nil || (metav1.IsControlledBy(kv, vm) && current != kvv1.RunStrategyAlways)
}

// restartNeedsSlot tells whether vm waits on a restart runpolicy recorded and KubeVirt has not taken: the ended VMI it
// restarts is still there. It is asked in every such pass, whether or not the pass sends the restart's request
// (virt-controller may not have seen the VMI end yet): status reads such a VM Starting, and a VM seen Starting
// without a slot would take one past the cap, as a start made without the gate. Ask keeps a holder's slot and a
// waiting VM's place.
func restartNeedsSlot(vm *v1alpha1.VirtualMachine, vmi *kvv1.VirtualMachineInstance) bool {
	uid := vm.Status.RestartingVMIUID
	return uid != "" && policy.StillEnded(vmi, types.UID(uid))
}

// askStart asks the start gate for a slot for vm; restart says it is a restart after its VMI ended. The VMs wait in
// the order the gate keeps; among those of the same kind and startOrder, a restart's ended VMI that ended first, a
// first start's VM that was created first. Callers ask only while the operator caps starts (Starts.Enabled).
func (r *Reconciler) askStart(ctx context.Context, vm *v1alpha1.VirtualMachine, restart bool) (startgate.Verdict, error) {
	if err := r.Starts.PrimeFrom(ctx, r.Client); err != nil {
		return startgate.Verdict{}, err
	}
	since := vm.CreationTimestamp.Time
	if ls := vm.Status.LastShutdown; restart && ls != nil && ls.Time != nil {
		since = ls.Time.Time
	}
	return r.Starts.Ask(client.ObjectKeyFromObject(vm), startgate.Ticket{Restart: restart, Order: vm.Spec.StartOrder, Since: since}), nil
}

// observeStart tells the start gate what the pass saw of vm.
func (r *Reconciler) observeStart(vm *v1alpha1.VirtualMachine, asked bool) {
	if !r.Starts.Enabled() {
		return
	}
	p := startgate.Idle
	switch {
	case vm.DeletionTimestamp != nil:
		p = startgate.Gone
	case vm.Status.Phase == v1alpha1.VirtualMachineStarting:
		p = startgate.Starting
	case vm.Status.Phase == v1alpha1.VirtualMachineRunning:
		p = startgate.Running
	}
	r.Starts.Observe(client.ObjectKeyFromObject(vm), p, asked)
}

// waitForStart shows in status that vm waits for a start slot, and its place. A first start waits with its KubeVirt
// VM kv as it is (nil: not created yet), which Synced says.
func waitForStart(vm *v1alpha1.VirtualMachine, v startgate.Verdict, kv *kvv1.VirtualMachine, first bool) {
	vm.Status.Phase = v1alpha1.VirtualMachinePending
	vm.Status.StartQueuePosition = int32(v.Place)
	setCondition(vm, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonWaitingForStartSlot, v.Explain())
	if !first {
		return
	}
	sync := "The KubeVirt VirtualMachine is created when the VM's start slot comes"
	if kv != nil {
		sync = "The KubeVirt VirtualMachine is left as it is (runStrategy " + string(ptr.Deref(kv.Spec.RunStrategy, "")) +
			") until the VM's start slot comes: applying the VM now would start it"
	}
	setCondition(vm, v1alpha1.ConditionSynced, metav1.ConditionFalse, v1alpha1.ReasonWaitingForStartSlot, sync)
}
