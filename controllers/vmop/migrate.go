package vmop

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/klog/v2"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/refusal"
)

// +kubebuilder:rbac:groups=kubevirt.io,resources=virtualmachineinstancemigrations,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=events,verbs=list

// LabelOperation names, on a VirtualMachineInstanceMigration, the operation that created it.
const LabelOperation = "runpolicy.io/operation"

// stepMigration moves a Migrate operation on by one pass. Its signal is a VirtualMachineInstanceMigration named
// after the operation and controlled by it: however often a pass creates it (a crash before the status write),
// there is one, and a pass that finds it records it as sent. The operation follows KubeVirt's migration to
// Succeeded (Completed) or Failed (Failed, MigrationFailed, with KubeVirt's reason).
func (r *Reconciler) stepMigration(ctx context.Context, op *v1alpha1.VirtualMachineOperation, in inputs, turn Turn, now metav1.Time) (ctrl.Result, error) {
	vmName := op.Spec.VirtualMachineName
	if turn.SupersededBy != "" {
		fail(op, now, v1alpha1.OperationReasonSuperseded, supersededMessage(op, in.vm, turn.SupersededBy))
		return ctrl.Result{}, nil
	}
	if op.Status.Phase == v1alpha1.OperationInProgress {
		return r.followMigration(ctx, op, now)
	}
	if turn.WaitFor != "" {
		waitForOther(op, turn.WaitFor)
		return ctrl.Result{}, nil
	}
	// A pass that created the migration may have ended before it recorded it.
	if existing, err := r.migrationOf(ctx, op); err != nil {
		return ctrl.Result{}, err
	} else if existing != nil {
		r.migrationSent(op, in.vm, existing, now)
		return ctrl.Result{}, nil
	}
	// A refusal is final, and the cache may lag behind a VMI that just went Running or live-migratable, or behind
	// another operation that just went in progress: judge on the API server's view, as send does.
	seen, ok, err := r.freshInputs(ctx, op)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !ok {
		return ctrl.Result{RequeueAfter: retrySoon}, nil
	}
	vmi := seen.vmi
	if vmi == nil || vmi.DeletionTimestamp != nil || vmi.Status.Phase != kvv1.Running {
		fail(op, now, v1alpha1.OperationReasonNotApplicableForVMPhase, fmt.Sprintf(
			"VirtualMachine %s (runPolicy %s) is %s: only a running VM can be %s; start it first",
			vmName, seen.vm.Spec.RunPolicy, vmiText(vmi), pastTense(op.Spec.Type)))
		return ctrl.Result{}, nil
	}
	if other, err := r.migrationInFlight(ctx, op, vmi); err != nil {
		return ctrl.Result{}, err
	} else if other != nil {
		fail(op, now, v1alpha1.OperationReasonMigrationInProgress, fmt.Sprintf(
			"VirtualMachine %s is being migrated already, by VirtualMachineInstanceMigration %s (phase %s), which "+
				"runpolicy did not create for this operation: KubeVirt migrates a VMI once at a time; create a new "+
				"%s operation once that migration ended", vmName, other.Name, migrationPhaseText(other.Status.Phase), op.Spec.Type))
		return ctrl.Result{}, nil
	}
	if ok, why := liveMigratable(vmi); !ok {
		if op.Spec.Type != v1alpha1.OperationEvict {
			fail(op, now, v1alpha1.OperationReasonNotMigratable, fmt.Sprintf(
				"KubeVirt cannot live-migrate VirtualMachine %s: %s", vmName, why))
			return ctrl.Result{}, nil
		}
		if ok, msg := EvictByRestart(vmName, seen.vm.Spec.RunPolicy, why); !ok {
			fail(op, now, v1alpha1.OperationReasonNotApplicableForRunPolicy, msg)
			return ctrl.Result{}, nil
		}
		// The choice is written before anything is sent, as a Restart's target is: from the next pass on, the
		// operation is a Restart of this VMI (ActionOf), whatever KubeVirt says about migrating it by then.
		op.Status.Eviction = &v1alpha1.OperationEviction{Method: v1alpha1.EvictionRestart, SourceNode: vmi.Status.NodeName}
		op.Status.TargetVMIUID = string(vmi.UID)
		msg := fmt.Sprintf("KubeVirt cannot live-migrate VirtualMachine %s (%s): restarting it instead, on a node the "+
			"scheduler picks", vmName, why)
		setCondition(op, v1alpha1.OperationConditionSignalSent, metav1.ConditionFalse, v1alpha1.OperationReasonSignalPending, msg)
		pending(op, v1alpha1.OperationReasonSignalPending, msg)
		return ctrl.Result{}, nil // the status write brings the next pass
	}
	vmim := &kvv1.VirtualMachineInstanceMigration{
		ObjectMeta: metav1.ObjectMeta{Namespace: op.Namespace, Name: op.Name,
			Labels:          map[string]string{LabelOperation: op.Name},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(op, v1alpha1.GroupVersion.WithKind("VirtualMachineOperation"))}},
		Spec: kvv1.VirtualMachineInstanceMigrationSpec{VMIName: vmi.Name},
	}
	if op.Spec.Migration != nil {
		vmim.Spec.AddedNodeSelector = op.Spec.Migration.NodeSelector
	}
	op.Status.TargetVMIUID = string(vmi.UID)
	op.Status.Migration = &v1alpha1.OperationMigration{Name: vmim.Name, SourceNode: vmi.Status.NodeName}
	if op.Spec.Type == v1alpha1.OperationEvict {
		op.Status.Eviction = &v1alpha1.OperationEviction{Method: v1alpha1.EvictionLiveMigration, SourceNode: vmi.Status.NodeName}
	}
	ctrl.LoggerFrom(ctx).Info("Creating a VirtualMachineInstanceMigration", "VirtualMachineInstance", klog.KObj(vmi),
		"sourceNode", vmi.Status.NodeName)
	err = r.Create(ctx, vmim)
	switch {
	case err == nil, apierrors.IsAlreadyExists(err):
		r.migrationSent(op, in.vm, vmim, now)
		return ctrl.Result{}, nil
	case refusal.Permanent(err):
		msg := fmt.Sprintf("KubeVirt did not accept the migration of VirtualMachine %s: %v", vmName, err)
		setCondition(op, v1alpha1.OperationConditionSignalSent, metav1.ConditionFalse, v1alpha1.OperationReasonSignalSentError, msg)
		fail(op, now, v1alpha1.OperationReasonFailed, msg)
		return ctrl.Result{}, nil
	default:
		msg := fmt.Sprintf("Could not create the migration of VirtualMachine %s: %v; retrying", vmName, err)
		setCondition(op, v1alpha1.OperationConditionSignalSent, metav1.ConditionFalse, v1alpha1.OperationReasonSignalSentError, msg)
		pending(op, v1alpha1.OperationReasonSignalPending, msg)
		return ctrl.Result{}, err
	}
}

// evictedByRestart completes an Evict that restarted the VM, once its new VMI runs (vmi), saying where: the scheduler
// may have placed it on the node it left, which is reported (EvictedToSameNode), not hidden.
func evictedByRestart(op *v1alpha1.VirtualMachineOperation, vmi *kvv1.VirtualMachineInstance, now metav1.Time) {
	e := op.Status.Eviction // set: ActionOf made the operation a Restart from it
	if vmi != nil {
		e.TargetNode = vmi.Status.NodeName
	}
	vmName := op.Spec.VirtualMachineName
	complete(op, now, fmt.Sprintf("VirtualMachine %s was restarted (it is not live-migratable): it ran on %s and runs on %s now",
		vmName, e.SourceNode, e.TargetNode))
	if e.TargetNode != "" && e.TargetNode == e.SourceNode {
		setCondition(op, v1alpha1.OperationConditionCompleted, metav1.ConditionTrue, v1alpha1.OperationReasonEvictedToSameNode,
			fmt.Sprintf("VirtualMachine %s was restarted (it is not live-migratable), but the scheduler placed its new VMI "+
				"on %s again, the node it ran on: cordon the node (kubectl cordon %s) to keep VMs off it, then evict again",
				vmName, e.SourceNode, e.SourceNode))
	}
}

// migrationInFlight returns a migration of vmi that has not ended, other than op's own, read from the API server
// (nil when there is none).
func (r *Reconciler) migrationInFlight(ctx context.Context, op *v1alpha1.VirtualMachineOperation,
	vmi *kvv1.VirtualMachineInstance) (*kvv1.VirtualMachineInstanceMigration, error) {
	var list kvv1.VirtualMachineInstanceMigrationList
	if err := r.APIReader.List(ctx, &list, client.InNamespace(vmi.Namespace)); err != nil {
		return nil, err
	}
	for i := range list.Items {
		m := &list.Items[i]
		if m.Spec.VMIName == vmi.Name && m.Name != op.Name && !m.IsFinal() && m.DeletionTimestamp == nil {
			return m, nil
		}
	}
	return nil, nil
}

// migrationPhaseText is a migration's phase, or that it has none yet.
func migrationPhaseText(p kvv1.VirtualMachineInstanceMigrationPhase) string {
	if p == "" {
		return "not started yet"
	}
	return string(p)
}

// vmiText says where the VMI stands, for a refusal.
func vmiText(vmi *kvv1.VirtualMachineInstance) string {
	switch {
	case vmi == nil:
		return "stopped (no VMI)"
	case vmi.DeletionTimestamp != nil:
		return "stopping (its VMI is being deleted)"
	default:
		return fmt.Sprintf("not running (its VMI is %s)", vmi.Status.Phase)
	}
}

// migrationOf reads the operation's migration from the API server (nil when there is none).
func (r *Reconciler) migrationOf(ctx context.Context, op *v1alpha1.VirtualMachineOperation) (*kvv1.VirtualMachineInstanceMigration, error) {
	vmim := &kvv1.VirtualMachineInstanceMigration{}
	err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: op.Namespace, Name: op.Name}, vmim)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !metav1.IsControlledBy(vmim, op) {
		return nil, fmt.Errorf("a VirtualMachineInstanceMigration %s/%s exists that VirtualMachineOperation %s does not control", op.Namespace, op.Name, op.Name)
	}
	return vmim, nil
}

func (r *Reconciler) migrationSent(op *v1alpha1.VirtualMachineOperation, vm *v1alpha1.VirtualMachine, vmim *kvv1.VirtualMachineInstanceMigration, now metav1.Time) {
	if op.Status.Migration == nil {
		op.Status.Migration = &v1alpha1.OperationMigration{Name: vmim.Name}
	}
	if op.Spec.Type == v1alpha1.OperationEvict && op.Status.Eviction == nil {
		op.Status.Eviction = &v1alpha1.OperationEviction{Method: v1alpha1.EvictionLiveMigration, SourceNode: op.Status.Migration.SourceNode}
	}
	op.Status.Phase = v1alpha1.OperationInProgress
	op.Status.SignalSentTime = &now
	setCondition(op, v1alpha1.OperationConditionSignalSent, metav1.ConditionTrue, v1alpha1.OperationReasonSignalSentSuccess,
		fmt.Sprintf("Created VirtualMachineInstanceMigration %s for VirtualMachine %s", vmim.Name, vm.Name))
	setCondition(op, v1alpha1.OperationConditionCompleted, metav1.ConditionFalse, v1alpha1.OperationReasonInProgress,
		fmt.Sprintf("Waiting for KubeVirt to migrate VirtualMachine %s", vm.Name))
}

// followMigration copies the migration's progress into the operation and ends it with the migration.
func (r *Reconciler) followMigration(ctx context.Context, op *v1alpha1.VirtualMachineOperation, now metav1.Time) (ctrl.Result, error) {
	vmim, err := r.migrationOf(ctx, op)
	if err != nil {
		return ctrl.Result{}, err
	}
	vmName := op.Spec.VirtualMachineName
	if vmim == nil {
		fail(op, now, v1alpha1.OperationReasonMigrationFailed, fmt.Sprintf(
			"The VirtualMachineInstanceMigration %s of VirtualMachine %s was deleted before it ended", op.Name, vmName))
		return ctrl.Result{}, nil
	}
	m := op.Status.Migration
	if m == nil {
		m = &v1alpha1.OperationMigration{Name: vmim.Name}
		op.Status.Migration = m
	}
	m.Phase = string(vmim.Status.Phase)
	if st := vmim.Status.MigrationState; st != nil {
		if st.SourceNode != "" {
			m.SourceNode = st.SourceNode
		}
		if st.TargetNode != "" {
			m.TargetNode = st.TargetNode
		}
	}
	switch vmim.Status.Phase {
	case kvv1.MigrationSucceeded:
		if e := op.Status.Eviction; e != nil {
			e.TargetNode = m.TargetNode
		}
		complete(op, now, fmt.Sprintf("VirtualMachine %s migrated from %s to %s", vmName, m.SourceNode, m.TargetNode))
	case kvv1.MigrationFailed:
		why := migrationFailure(vmim)
		if why == "" {
			why = r.migrationEvents(ctx, vmim)
		}
		fail(op, now, v1alpha1.OperationReasonMigrationFailed, fmt.Sprintf("KubeVirt's migration of VirtualMachine %s failed: %s",
			vmName, why))
	default:
		return ctrl.Result{RequeueAfter: 2 * time.Second}, nil // the migration's own events also bring a pass
	}
	return ctrl.Result{}, nil
}

// liveMigratable reads KubeVirt's LiveMigratable condition of the VMI.
func liveMigratable(vmi *kvv1.VirtualMachineInstance) (bool, string) {
	for _, c := range vmi.Status.Conditions {
		if c.Type == kvv1.VirtualMachineInstanceIsMigratable {
			if c.Status == "True" {
				return true, ""
			}
			return false, strings.TrimSpace(c.Reason + ": " + c.Message)
		}
	}
	return false, "virt-handler has not reported whether the VMI is live-migratable (no LiveMigratable condition)"
}

// migrationFailure is KubeVirt's account of why a migration failed in its status: the migration state's reason,
// or the migration's conditions; "" when the status gives none (a migration whose target pod never started).
func migrationFailure(vmim *kvv1.VirtualMachineInstanceMigration) string {
	var parts []string
	if st := vmim.Status.MigrationState; st != nil && st.FailureReason != "" {
		parts = append(parts, st.FailureReason)
	}
	for _, c := range vmim.Status.Conditions {
		if c.Message != "" || c.Reason != "" {
			parts = append(parts, strings.TrimSpace(fmt.Sprintf("%s %s: %s", c.Type, c.Reason, c.Message)))
		}
	}
	return strings.Join(parts, "; ")
}

// migrationEvents is what virt-controller's Events on the migration say, oldest first (a migration whose target pod
// could not be scheduled carries its account only there).
func (r *Reconciler) migrationEvents(ctx context.Context, vmim *kvv1.VirtualMachineInstanceMigration) string {
	const none = "KubeVirt gave no reason (see the VirtualMachineInstanceMigration's events)"
	var evs corev1.EventList
	if err := r.APIReader.List(ctx, &evs, client.InNamespace(vmim.Namespace),
		client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("involvedObject.uid", string(vmim.UID))}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing the migration's Events")
		return none
	}
	slices.SortStableFunc(evs.Items, func(a, b corev1.Event) int { return a.LastTimestamp.Compare(b.LastTimestamp.Time) })
	var msgs []string
	for _, e := range evs.Items {
		if e.Message != "" && !slices.Contains(msgs, e.Message) {
			msgs = append(msgs, e.Message)
		}
	}
	if len(msgs) == 0 {
		return none
	}
	return strings.Join(msgs, "; ")
}
