package vmop

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/startgate"
)

// askStart asks the start gate for a slot for op's Start or Restart of vm. An operation waits as a first start does
// (its VM runs, or was stopped on purpose), behind the restarts of VMs whose VMI ended; among those, lower
// spec.startOrder first, then the operation created first.
func (r *Reconciler) askStart(ctx context.Context, op *v1alpha1.VirtualMachineOperation, vm *v1alpha1.VirtualMachine) (startgate.Verdict, error) {
	if err := r.Starts.PrimeFrom(ctx, r.Client); err != nil {
		return startgate.Verdict{}, err
	}
	return r.Starts.Ask(client.ObjectKeyFromObject(vm), startgate.Ticket{
		Order: vm.Spec.StartOrder, Since: op.CreationTimestamp.Time, Op: op.Name}), nil
}

// waitForStart keeps op Pending while it waits for a start slot, with its place.
func waitForStart(op *v1alpha1.VirtualMachineOperation, v startgate.Verdict) {
	msg := fmt.Sprintf("%s of VirtualMachine %s: %s", op.Spec.Type, op.Spec.VirtualMachineName, v.Explain())
	if ActionOf(op) == v1alpha1.OperationRestart {
		msg += "; the VM keeps running until then"
	}
	pending(op, v1alpha1.OperationReasonWaitingForStartSlot, msg)
}

// keepsStartTicket tells whether op, after a pass, keeps what it holds at the start gate: it waits for a slot, or
// is about to send its signal with one, or its signal was sent (the slot then follows the VM's start). Otherwise it
// gives back its place, and a slot its VM has not used (Gate.Withdraw).
func keepsStartTicket(op *v1alpha1.VirtualMachineOperation) bool {
	switch op.Status.Phase {
	case v1alpha1.OperationInProgress:
		return true
	case v1alpha1.OperationPending:
		c := meta.FindStatusCondition(op.Status.Conditions, v1alpha1.OperationConditionCompleted)
		return c != nil && (c.Reason == v1alpha1.OperationReasonWaitingForStartSlot || c.Reason == v1alpha1.OperationReasonSignalPending)
	}
	return false
}
