package kubevirt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// vmController plays virt-controller's VirtualMachine controller
// (kubevirt/kubevirt pkg/virt-controller/watch/vm/vm.go): runStrategy handling (syncRunStrategy),
// stateChangeRequests, start-failure backoff (syncStartFailureStatus), conditions and printableStatus
// (updateStatus/setPrintableStatus). It reads the VM and VMI uncached on every pass instead of using KubeVirt's
// expectations, so a pass never acts on a stale cache; "start/stop expected" only lives within one pass.
type vmController struct {
	s *StandIn
}

// pass holds what one reconcile did, standing in for KubeVirt's controller expectations.
type pass struct {
	startExpected bool
	stopExpected  bool
	requeueAfter  time.Duration
}

func (r *vmController) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	c := r.s.client
	vm := &virtv1.VirtualMachine{}
	if err := c.Get(ctx, req.NamespacedName, vm); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	origStatus := vm.Status.DeepCopy()
	vmi, err := r.s.getVMI(ctx, req.Namespace, req.Name)
	if err != nil {
		return ctrl.Result{}, err
	}
	if vmi != nil {
		// ClaimVirtualMachineInstanceByName: only a VMI controlled by this VM counts (no adoption here).
		if ref := metav1.GetControllerOf(vmi); ref == nil || ref.UID != vm.UID {
			vmi = nil
		}
	}

	p := &pass{}
	var syncErr *syncError
	if vm.DeletionTimestamp != nil {
		if vmi == nil {
			if err := patchFinalizers(ctx, c, vm, removeString(vm.Finalizers, virtv1.VirtualMachineControllerFinalizer)); err != nil {
				return ctrl.Result{}, err
			}
		} else if err := r.stopVMI(ctx, vm, vmi, p); err != nil {
			syncErr = &syncError{fmt.Errorf("Failure attempting to delete VMI: %v", err), "FailedDelete"}
		}
	} else {
		if !containsString(vm.Finalizers, virtv1.VirtualMachineControllerFinalizer) {
			if err := patchFinalizers(ctx, c, vm, append(append([]string{}, vm.Finalizers...), virtv1.VirtualMachineControllerFinalizer)); err != nil {
				return ctrl.Result{}, err
			}
		}
		if err := r.s.ensureDataVolumes(ctx, vm); err != nil {
			return ctrl.Result{}, err
		}
		runStrategy, err := vm.RunStrategy()
		if err != nil {
			return ctrl.Result{}, err
		}
		syncErr = r.syncRunStrategy(ctx, vm, vmi, runStrategy, p)
	}

	if err := r.updateStatus(ctx, vm, origStatus, vmi, syncErr, p); err != nil {
		return ctrl.Result{}, err
	}
	if syncErr != nil {
		return ctrl.Result{}, syncErr
	}
	return ctrl.Result{RequeueAfter: p.requeueAfter}, nil
}

type syncError struct {
	err    error
	reason string
}

func (e *syncError) Error() string { return e.err.Error() }

// syncRunStrategy follows vm.go syncRunStrategy case by case (RunStrategyWaitAsReceiver and decentralized
// migration are left out).
func (r *vmController) syncRunStrategy(ctx context.Context, vm *virtv1.VirtualMachine, vmi *virtv1.VirtualMachineInstance,
	runStrategy virtv1.VirtualMachineRunStrategy, p *pass) *syncError {
	stopErr := func(err error) *syncError {
		return &syncError{fmt.Errorf("Failure attempting to delete VMI: %v", err), "FailedDelete"}
	}
	startErr := func(err error) *syncError {
		return &syncError{fmt.Errorf("Failure while starting VMI: %v", err), "FailedCreate"}
	}
	switch runStrategy {
	case virtv1.RunStrategyAlways:
		// A VMI should always run; a stop request for the current VMI is a forced restart.
		if vmi != nil {
			if hasStopRequestForVMI(vm, vmi) || vmi.IsFinal() {
				if err := r.stopVMI(ctx, vm, vmi, p); err != nil {
					return stopErr(err)
				}
			}
			return nil
		}
		if left := startFailureBackoffTimeLeft(vm); left > 0 {
			p.requeueAfter = left
			return nil
		}
		if err := r.startVMI(ctx, vm, p); err != nil {
			return startErr(err)
		}
	case virtv1.RunStrategyRerunOnFailure:
		// Restart only a failed VMI; a succeeded one is removed and stays down.
		if vmi != nil {
			forceStop := hasStopRequestForVMI(vm, vmi)
			failed := vmi.Status.Phase == virtv1.Failed
			succeeded := vmi.Status.Phase == virtv1.Succeeded
			if vmi.DeletionTimestamp == nil && (forceStop || failed || succeeded) {
				if err := r.stopVMI(ctx, vm, vmi, p); err != nil {
					return stopErr(err)
				}
				if failed {
					if err := r.addStartRequest(ctx, vm); err != nil {
						return &syncError{fmt.Errorf("failed to patch VM with start action: %v", err), "FailedDelete"}
					}
				}
			}
			return nil
		}
		// When coming here from a different RunStrategy the VM has to be started.
		if !hasStartRequest(vm) && vm.Status.RunStrategy == runStrategy {
			return nil
		}
		if left := startFailureBackoffTimeLeft(vm); left > 0 {
			p.requeueAfter = left
			return nil
		}
		if err := r.startVMI(ctx, vm, p); err != nil {
			return startErr(err)
		}
	case virtv1.RunStrategyManual:
		// Started and stopped through the API only (stateChangeRequests); a finished VMI is left alone.
		if vmi != nil {
			if hasStopRequestForVMI(vm, vmi) {
				if err := r.stopVMI(ctx, vm, vmi, p); err != nil {
					return stopErr(err)
				}
			}
		} else if hasStartRequest(vm) {
			if err := r.startVMI(ctx, vm, p); err != nil {
				return startErr(err)
			}
		}
	case virtv1.RunStrategyHalted:
		// No VMI, ever. A start request (virtctl start --paused) flips the strategy to Always.
		if vmi == nil {
			if hasStartRequest(vm) {
				patch, _ := json.Marshal([]map[string]any{
					{"op": "test", "path": "/spec/runStrategy", "value": vm.Spec.RunStrategy},
					{"op": "replace", "path": "/spec/runStrategy", "value": virtv1.RunStrategyAlways},
				})
				if err := r.s.client.Patch(ctx, vm.DeepCopy(), client.RawPatch(types.JSONPatchType, patch)); err != nil {
					return startErr(err)
				}
			}
			return nil
		}
		if err := r.stopVMI(ctx, vm, vmi, p); err != nil {
			return stopErr(err)
		}
	case virtv1.RunStrategyOnce:
		if vmi == nil {
			if err := r.startVMI(ctx, vm, p); err != nil {
				return startErr(err)
			}
		}
	default:
		return &syncError{fmt.Errorf("unknown runstrategy: %s", runStrategy), "FailedCreate"}
	}
	return nil
}

// startVMI follows vm.go startVMI/SetupVMIFromVM: the VMI takes the template's metadata and spec, the VM's name,
// a controller owner reference to the VM, the VM generation annotation and the VM controller's finalizer.
func (r *vmController) startVMI(ctx context.Context, vm *virtv1.VirtualMachine, p *pass) error {
	if vm.Spec.Template == nil {
		return errors.New("VM has no template")
	}
	vmi := &virtv1.VirtualMachineInstance{
		ObjectMeta: *vm.Spec.Template.ObjectMeta.DeepCopy(),
		Spec:       *vm.Spec.Template.Spec.DeepCopy(),
	}
	vmi.Name = vm.Name
	vmi.GenerateName = ""
	vmi.Namespace = vm.Namespace
	vmi.ResourceVersion = ""
	vmi.UID = ""
	if hasStartPausedRequest(vm) {
		s := virtv1.StartStrategyPaused
		vmi.Spec.StartStrategy = &s
	}
	vmi.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(vm, virtv1.VirtualMachineGroupVersionKind)}
	if vmi.Annotations == nil {
		vmi.Annotations = map[string]string{}
	}
	vmi.Annotations[virtv1.VirtualMachineGenerationAnnotation] = strconv.FormatInt(vm.Generation, 10)
	vmi.Finalizers = append(vmi.Finalizers, virtv1.VirtualMachineControllerFinalizer)
	cleanupRestartRequired(vm)
	if err := r.s.client.Create(ctx, vmi); err != nil {
		return err
	}
	p.startExpected = true
	r.s.recordVMICreated(vm, vmi)
	return nil
}

// stopVMI deletes the VMI (vm.go stopVMI); the VMI's terminationGracePeriodSeconds decides how the guest goes.
func (r *vmController) stopVMI(ctx context.Context, vm *virtv1.VirtualMachine, vmi *virtv1.VirtualMachineInstance, p *pass) error {
	if vmi == nil || vmi.DeletionTimestamp != nil {
		return nil
	}
	if err := r.s.client.Delete(ctx, vmi, client.Preconditions{UID: &vmi.UID}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	p.stopExpected = true
	cleanupRestartRequired(vm)
	return nil
}

// addStartRequest is vm.go addStartRequest (RerunOnFailure after a failure).
func (r *vmController) addStartRequest(ctx context.Context, vm *virtv1.VirtualMachine) error {
	desired := append(append([]virtv1.VirtualMachineStateChangeRequest{}, vm.Status.StateChangeRequests...),
		virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StartRequest})
	patch, _ := json.Marshal([]map[string]any{{"op": "add", "path": "/status/stateChangeRequests", "value": desired}})
	patched := vm.DeepCopy()
	if err := r.s.client.Status().Patch(ctx, patched, client.RawPatch(types.JSONPatchType, patch)); err != nil {
		return err
	}
	vm.Status = patched.Status
	vm.ResourceVersion = patched.ResourceVersion
	return nil
}

// updateStatus follows vm.go updateStatus: created/ready, generations, runStrategy, trimming the first state
// change request, start failures, conditions, printableStatus; one status write if anything changed; then the VM
// controller's finalizer comes off a final VMI.
func (r *vmController) updateStatus(ctx context.Context, vm *virtv1.VirtualMachine, origStatus *virtv1.VirtualMachineStatus,
	vmi *virtv1.VirtualMachineInstance, syncErr *syncError, p *pass) error {
	vm.Status.Created = vmi != nil
	vm.Status.Ready = false
	if vmi != nil {
		vm.Status.Ready = vmiConditionTrue(vmi, virtv1.VirtualMachineInstanceReady)
		if g, err := strconv.ParseInt(vmi.Annotations[virtv1.VirtualMachineGenerationAnnotation], 10, 64); err == nil {
			vm.Status.ObservedGeneration = g
			vm.Status.DesiredGeneration = vm.Generation
		}
	}
	runStrategy, _ := vm.RunStrategy()
	// Synced for the first time only when a VMI got created, so one can tell the VM started at least once.
	if vm.Status.RunStrategy != "" || vm.Status.Created {
		vm.Status.RunStrategy = runStrategy
	}
	if isTrimFirstChangeRequestNeeded(vm, vmi) {
		vm.Status.StateChangeRequests = vm.Status.StateChangeRequests[1:]
		if len(vm.Status.StateChangeRequests) == 0 {
			vm.Status.StateChangeRequests = nil
		}
	}
	r.syncStartFailureStatus(vm, vmi)
	syncConditions(vm, vmi, syncErr)
	vm.Status.PrintableStatus = printableStatus(vm, vmi, p)

	if !equality.Semantic.DeepEqual(vm.Status, *origStatus) {
		if err := r.s.client.Status().Update(ctx, vm); err != nil {
			return err
		}
	}
	if vmi != nil && vmi.IsFinal() && containsString(vmi.Finalizers, virtv1.VirtualMachineControllerFinalizer) {
		return patchFinalizers(ctx, r.s.client, vmi, removeString(vmi.Finalizers, virtv1.VirtualMachineControllerFinalizer))
	}
	return nil
}

func hasStartRequest(vm *virtv1.VirtualMachine) bool {
	return len(vm.Status.StateChangeRequests) > 0 && vm.Status.StateChangeRequests[0].Action == virtv1.StartRequest
}

func hasStartPausedRequest(vm *virtv1.VirtualMachine) bool {
	return hasStartRequest(vm) &&
		vm.Status.StateChangeRequests[0].Data[virtv1.StartRequestDataPausedKey] == virtv1.StartRequestDataPausedTrue
}

// hasStopRequestForVMI: KubeVirt only acts on a Stop whose UID is the current VMI's.
func hasStopRequestForVMI(vm *virtv1.VirtualMachine, vmi *virtv1.VirtualMachineInstance) bool {
	if len(vm.Status.StateChangeRequests) == 0 {
		return false
	}
	sc := vm.Status.StateChangeRequests[0]
	return sc.Action == virtv1.StopRequest && sc.UID != nil && *sc.UID == vmi.UID
}

// isTrimFirstChangeRequestNeeded is vm.go's: a Stop goes once its VMI is gone (or another VMI is there, or it
// has no UID); a Start goes once a live VMI exists.
func isTrimFirstChangeRequestNeeded(vm *virtv1.VirtualMachine, vmi *virtv1.VirtualMachineInstance) bool {
	if len(vm.Status.StateChangeRequests) == 0 {
		return false
	}
	sc := vm.Status.StateChangeRequests[0]
	switch sc.Action {
	case virtv1.StopRequest:
		return vmi == nil || sc.UID == nil || *sc.UID != vmi.UID
	case virtv1.StartRequest:
		return vmi != nil && vmi.DeletionTimestamp == nil && !vmi.IsFinal()
	}
	return false
}

func wasVMIInRunningPhase(vmi *virtv1.VirtualMachineInstance) bool {
	if vmi == nil {
		return false
	}
	for _, ts := range vmi.Status.PhaseTransitionTimestamps {
		if ts.Phase == virtv1.Running {
			return true
		}
	}
	return false
}

// syncStartFailureStatus is vm.go's: a VMI that ended before ever reaching Running counts as a start failure for
// Always/RerunOnFailure/Once and delays the next start; a VMI that ran (or another strategy) clears it. The delay
// comes from Options.StartFailureBackoff instead of KubeVirt's 10s·n² (+jitter, max 300s).
func (r *vmController) syncStartFailureStatus(vm *virtv1.VirtualMachine, vmi *virtv1.VirtualMachineInstance) {
	rs, _ := vm.RunStrategy()
	if wasVMIInRunningPhase(vmi) ||
		(rs != virtv1.RunStrategyAlways && rs != virtv1.RunStrategyRerunOnFailure && rs != virtv1.RunStrategyOnce) {
		vm.Status.StartFailure = nil
		return
	}
	if vmi == nil || !vmi.IsFinal() {
		return
	}
	if vm.Status.StartFailure != nil && vm.Status.StartFailure.LastFailedVMIUID == vmi.UID {
		return
	}
	count := 1
	if vm.Status.StartFailure != nil {
		count = vm.Status.StartFailure.ConsecutiveFailCount + 1
	}
	// metav1.Time is serialised to the second: round up so the stored time never precedes the delay.
	retry := time.Now().Add(r.s.opts.StartFailureBackoff(count))
	if t := retry.Truncate(time.Second); !t.Equal(retry) {
		retry = t.Add(time.Second)
	}
	at := metav1.NewTime(retry)
	vm.Status.StartFailure = &virtv1.VirtualMachineStartFailure{
		LastFailedVMIUID: vmi.UID, RetryAfterTimestamp: &at, ConsecutiveFailCount: count,
	}
}

func startFailureBackoffTimeLeft(vm *virtv1.VirtualMachine) time.Duration {
	if vm.Status.StartFailure == nil || vm.Status.StartFailure.RetryAfterTimestamp == nil {
		return 0
	}
	if left := time.Until(vm.Status.StartFailure.RetryAfterTimestamp.Time); left > 0 {
		return left
	}
	return 0
}

func cleanupRestartRequired(vm *virtv1.VirtualMachine) {
	removeVMCondition(vm, virtv1.VirtualMachineRestartRequired)
}

// syncConditions is vm.go's: Ready mirrors the VMI's Ready (VMINotExists / VMIConditionMissing otherwise),
// Failure carries the sync error, every other VMI condition is copied and stale ones dropped.
func syncConditions(vm *virtv1.VirtualMachine, vmi *virtv1.VirtualMachineInstance, syncErr *syncError) {
	now := metav1.Now()
	ready := virtv1.VirtualMachineCondition{Type: virtv1.VirtualMachineReady, Status: corev1.ConditionFalse,
		LastProbeTime: now, LastTransitionTime: now}
	switch c := vmiCondition(vmi, virtv1.VirtualMachineInstanceReady); {
	case vmi == nil:
		ready.Reason, ready.Message = "VMINotExists", "VMI does not exist"
	case c == nil:
		ready.Reason, ready.Message = "VMIConditionMissing", "VMI is missing the Ready condition"
	default:
		ready = virtv1.VirtualMachineCondition{Type: virtv1.VirtualMachineReady, Status: c.Status, Reason: c.Reason,
			Message: c.Message, LastProbeTime: c.LastProbeTime, LastTransitionTime: c.LastTransitionTime}
	}
	updateVMCondition(vm, ready)
	if syncErr == nil {
		removeVMCondition(vm, virtv1.VirtualMachineFailure)
	} else {
		updateVMCondition(vm, virtv1.VirtualMachineCondition{Type: virtv1.VirtualMachineFailure, Status: corev1.ConditionTrue,
			Reason: syncErr.reason, Message: syncErr.Error(), LastTransitionTime: now})
	}
	if vmi == nil {
		return
	}
	ignore := map[virtv1.VirtualMachineConditionType]bool{virtv1.VirtualMachineReady: true,
		virtv1.VirtualMachineFailure: true, virtv1.VirtualMachineRestartRequired: true}
	seen := map[virtv1.VirtualMachineConditionType]bool{}
	for _, c := range vmi.Status.Conditions {
		t := virtv1.VirtualMachineConditionType(c.Type)
		if ignore[t] {
			continue
		}
		seen[t] = true
		updateVMCondition(vm, virtv1.VirtualMachineCondition{Type: t, Status: c.Status, Reason: c.Reason, Message: c.Message,
			LastProbeTime: c.LastProbeTime, LastTransitionTime: c.LastTransitionTime})
	}
	for _, c := range append([]virtv1.VirtualMachineCondition{}, vm.Status.Conditions...) {
		if !ignore[c.Type] && !seen[c.Type] {
			removeVMCondition(vm, c.Type)
		}
	}
}

// printableStatus is vm.go setPrintableStatus: the first matching status wins. Migrating, Paused, the volume and
// image-pull states and WaitingForReceiver never occur in the stand-in.
func printableStatus(vm *virtv1.VirtualMachine, vmi *virtv1.VirtualMachineInstance, p *pass) virtv1.VirtualMachinePrintableStatus {
	rs, _ := vm.RunStrategy()
	switch {
	case vm.DeletionTimestamp != nil:
		return virtv1.VirtualMachineStatusTerminating
	case vmi != nil && !vmi.IsFinal() && (vmi.DeletionTimestamp != nil || p.stopExpected):
		return virtv1.VirtualMachineStatusStopping
	case vmi != nil && vmi.IsRunning():
		return virtv1.VirtualMachineStatusRunning
	case vmiConditionHas(vmi, virtv1.VirtualMachineInstanceConditionType(corev1.PodScheduled), corev1.ConditionFalse, corev1.PodReasonUnschedulable):
		return virtv1.VirtualMachineStatusUnschedulable
	case vmi == nil && p.startExpected,
		vmi != nil && (vmi.IsUnprocessed() || vmi.IsScheduling() || vmi.IsScheduled()):
		return virtv1.VirtualMachineStatusStarting
	case (vmi == nil || vmi.IsFinal()) && !p.startExpected && vm.Status.StartFailure != nil &&
		vm.Status.StartFailure.ConsecutiveFailCount > 0 &&
		(rs == virtv1.RunStrategyAlways || rs == virtv1.RunStrategyRerunOnFailure || rs == virtv1.RunStrategyOnce):
		return virtv1.VirtualMachineStatusCrashLoopBackOff
	case vmi != nil && vmi.IsFinal(), vmi == nil && !p.startExpected:
		return virtv1.VirtualMachineStatusStopped
	}
	return virtv1.VirtualMachineStatusUnknown
}

// updateVMCondition replaces a condition only when status, reason or message changed, so the times of an
// unchanged condition stay put and a quiet pass writes nothing.
func updateVMCondition(vm *virtv1.VirtualMachine, c virtv1.VirtualMachineCondition) {
	for i := range vm.Status.Conditions {
		old := &vm.Status.Conditions[i]
		if old.Type != c.Type {
			continue
		}
		if old.Status != c.Status || old.Reason != c.Reason || old.Message != c.Message {
			*old = c
		}
		return
	}
	vm.Status.Conditions = append(vm.Status.Conditions, c)
}

func removeVMCondition(vm *virtv1.VirtualMachine, t virtv1.VirtualMachineConditionType) {
	var out []virtv1.VirtualMachineCondition
	for _, c := range vm.Status.Conditions {
		if c.Type != t {
			out = append(out, c)
		}
	}
	vm.Status.Conditions = out
}

func vmiCondition(vmi *virtv1.VirtualMachineInstance, t virtv1.VirtualMachineInstanceConditionType) *virtv1.VirtualMachineInstanceCondition {
	if vmi == nil {
		return nil
	}
	for i := range vmi.Status.Conditions {
		if vmi.Status.Conditions[i].Type == t {
			return &vmi.Status.Conditions[i]
		}
	}
	return nil
}

func vmiConditionTrue(vmi *virtv1.VirtualMachineInstance, t virtv1.VirtualMachineInstanceConditionType) bool {
	c := vmiCondition(vmi, t)
	return c != nil && c.Status == corev1.ConditionTrue
}

func vmiConditionHas(vmi *virtv1.VirtualMachineInstance, t virtv1.VirtualMachineInstanceConditionType, s corev1.ConditionStatus, reason string) bool {
	c := vmiCondition(vmi, t)
	return c != nil && c.Status == s && c.Reason == reason
}

// patchFinalizers sets metadata.finalizers with a JSON patch guarded by a test op (KubeVirt's getPatchFinalizerOps).
func patchFinalizers(ctx context.Context, c client.Client, obj client.Object, finalizers []string) error {
	if finalizers == nil {
		finalizers = []string{}
	}
	var old any = obj.GetFinalizers()
	if obj.GetFinalizers() == nil {
		old = nil
	}
	ops := []map[string]any{{"op": "test", "path": "/metadata/finalizers", "value": old},
		{"op": "replace", "path": "/metadata/finalizers", "value": finalizers}}
	if old == nil {
		ops = []map[string]any{{"op": "add", "path": "/metadata/finalizers", "value": finalizers}}
	}
	patch, _ := json.Marshal(ops)
	err := c.Patch(ctx, obj, client.RawPatch(types.JSONPatchType, patch))
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func removeString(list []string, s string) []string {
	out := []string{}
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}
