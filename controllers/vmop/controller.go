// Package vmop reconciles VirtualMachineOperations: Start, Stop and Restart of a runpolicy.io VirtualMachine,
// carried out through KubeVirt's start/stop/restart subresources. The rules are in RULES.md and rules.go.
package vmop

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/lifecycle"
	"github.com/runpolicy/runpolicy/internal/metrics"
	"github.com/runpolicy/runpolicy/internal/refusal"
	"github.com/runpolicy/runpolicy/internal/startgate"
)

// IndexVMName is the field index of VirtualMachineOperations by spec.virtualMachineName.
const IndexVMName = "spec.virtualMachineName"

// Defaults of the operation timeout and of the cleanup of finished operations.
const (
	DefaultTTL      = 24 * time.Hour
	DefaultMaxPerVM = 10
	DefaultTimeout  = 10 * time.Minute
)

// Event reasons.
const (
	EventSignalSent   = "SignalSent"
	EventSignalFailed = "SignalFailed"
	EventCompleted    = "Completed"
	EventFailed       = "Failed"
	// EventStoppedAgain: a Stop in progress stopped a VMI that started after its signal.
	EventStoppedAgain = "StoppedAgain"
)

// Reconciler drives VirtualMachineOperations.
type Reconciler struct {
	client.Client
	// APIReader reads uncached: right before a signal the operation and KubeVirt's state are read fresh, so a
	// stale cache never sends a signal twice.
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	// Lifecycle calls KubeVirt's start/stop/restart subresources.
	Lifecycle lifecycle.Interface
	// TTL removes finished operations that long after they finished; zero means DefaultTTL, negative keeps them.
	TTL time.Duration
	// MaxPerVM keeps at most that many finished operations per VM (the newest); zero means DefaultMaxPerVM,
	// negative means no limit.
	MaxPerVM int
	// Timeout fails an operation whose target state KubeVirt has not reported that long after it accepted the
	// signal; zero means DefaultTimeout, negative means no limit.
	Timeout time.Duration
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// Starts is the VM controller's start gate (--max-concurrent-starts): a Start or Restart waits for a slot
	// before its signal. Nil: no cap.
	Starts *startgate.Gate
}

// +kubebuilder:rbac:groups=runpolicy.io,resources=virtualmachineoperations,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=runpolicy.io,resources=virtualmachineoperations/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=runpolicy.io,resources=virtualmachines,verbs=get;list;watch
// +kubebuilder:rbac:groups=kubevirt.io,resources=virtualmachines,verbs=get;list;watch
// +kubebuilder:rbac:groups=kubevirt.io,resources=virtualmachines/status,verbs=patch
// +kubebuilder:rbac:groups=kubevirt.io,resources=virtualmachineinstances,verbs=get;list;watch
// +kubebuilder:rbac:groups=subresources.kubevirt.io,resources=virtualmachines/start;virtualmachines/stop;virtualmachines/restart,verbs=update
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// retrySoon is how soon a pass whose status write conflicted, or whose cache was behind, runs again: the watch
// event of the newer object usually comes first.
const retrySoon = 200 * time.Millisecond

// Reconcile fetches the operation, its VM, the KubeVirt VM and VMI and its sibling operations, decides, sends at
// most one signal and writes status once.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	op := &v1alpha1.VirtualMachineOperation{}
	if err := r.Get(ctx, req.NamespacedName, op); err != nil {
		r.Starts.Withdraw(req.NamespacedName)
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if op.DeletionTimestamp != nil {
		r.Starts.Withdraw(req.NamespacedName)
		return ctrl.Result{}, nil
	}
	if Finished(op) {
		r.Starts.Withdraw(req.NamespacedName)
		return r.collect(ctx, op)
	}

	in, err := r.gather(ctx, r.Client, op, false)
	if err != nil {
		return ctrl.Result{}, err
	}
	before := op.Status.DeepCopy()
	res, stepErr := r.step(ctx, op, in)
	op.Status.ObservedGeneration = op.Generation
	if !keepsStartTicket(op) {
		r.Starts.Withdraw(req.NamespacedName)
	}

	if !equality.Semantic.DeepEqual(before, &op.Status) {
		if err := r.Status().Update(ctx, op); err != nil {
			if apierrors.IsConflict(err) {
				log.V(1).Info("Status update conflicted, requeueing")
				return ctrl.Result{RequeueAfter: retrySoon}, nil
			}
			return ctrl.Result{}, errors.Join(err, stepErr)
		}
		r.recordTransition(op, before)
	}
	if stepErr != nil {
		return ctrl.Result{}, stepErr
	}
	if Finished(op) {
		return r.collect(ctx, op)
	}
	return res, nil
}

// inputs is what one pass reads.
type inputs struct {
	vm       *v1alpha1.VirtualMachine // nil: not found
	kv       *kvv1.VirtualMachine     // nil: not found
	vmi      *kvv1.VirtualMachineInstance
	siblings []v1alpha1.VirtualMachineOperation // every operation of the VM, this one included
}

// gather reads through c; fresh (c reads uncached) lists the sibling operations past the cache too.
func (r *Reconciler) gather(ctx context.Context, c client.Reader, op *v1alpha1.VirtualMachineOperation, fresh bool) (inputs, error) {
	var in inputs
	key := types.NamespacedName{Namespace: op.Namespace, Name: op.Spec.VirtualMachineName}
	vm := &v1alpha1.VirtualMachine{}
	if err := getOrNil(ctx, c, key, vm); err != nil {
		return in, err
	} else if vm.Name != "" {
		in.vm = vm
	}
	kv := &kvv1.VirtualMachine{}
	if err := getOrNil(ctx, c, key, kv); err != nil {
		return in, err
	} else if kv.Name != "" {
		in.kv = kv
	}
	vmi := &kvv1.VirtualMachineInstance{}
	if err := getOrNil(ctx, c, key, vmi); err != nil {
		return in, err
	} else if vmi.Name != "" {
		in.vmi = vmi
	}
	list := &v1alpha1.VirtualMachineOperationList{}
	if !fresh {
		if err := r.List(ctx, list, client.InNamespace(op.Namespace), client.MatchingFields{IndexVMName: op.Spec.VirtualMachineName}); err != nil {
			return in, err
		}
		in.siblings = list.Items
		return in, nil
	}
	// The API server has no field selector for spec.virtualMachineName (the index is the cache's).
	if err := c.List(ctx, list, client.InNamespace(op.Namespace)); err != nil {
		return in, err
	}
	for i := range list.Items {
		if list.Items[i].Spec.VirtualMachineName == op.Spec.VirtualMachineName {
			in.siblings = append(in.siblings, list.Items[i])
		}
	}
	return in, nil
}

// turnOf applies the queue rules to op among the operations of in.
func turnOf(op *v1alpha1.VirtualMachineOperation, in inputs) Turn {
	all := make([]Op, 0, len(in.siblings))
	for i := range in.siblings {
		all = append(all, OpOf(&in.siblings[i]))
	}
	return Queue(OpOf(op), all)
}

func getOrNil(ctx context.Context, c client.Reader, key types.NamespacedName, obj client.Object) error {
	if err := c.Get(ctx, key, obj); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

func (r *Reconciler) now() metav1.Time {
	if r.Clock != nil {
		return metav1.NewTime(r.Clock())
	}
	return metav1.Now()
}

// step moves an unfinished operation on by one pass, in memory. It calls KubeVirt at most once.
func (r *Reconciler) step(ctx context.Context, op *v1alpha1.VirtualMachineOperation, in inputs) (ctrl.Result, error) {
	now := r.now()
	t, vmName := op.Spec.Type, op.Spec.VirtualMachineName
	if in.vm == nil && r.APIReader != nil {
		// The cache may not have a VM created a moment ago (one `kubectl apply` of a VM and an operation on it):
		// ask the API server before failing.
		vm := &v1alpha1.VirtualMachine{}
		key := types.NamespacedName{Namespace: op.Namespace, Name: vmName}
		if err := getOrNil(ctx, r.APIReader, key, vm); err != nil {
			return ctrl.Result{}, err
		} else if vm.Name != "" {
			return ctrl.Result{RequeueAfter: time.Second}, nil
		}
	}
	if in.vm == nil {
		fail(op, now, v1alpha1.OperationReasonVirtualMachineNotFound, fmt.Sprintf(
			"VirtualMachine %s not found in namespace %s; create it (runpolicy.io/v1alpha1) or point spec.virtualMachineName "+
				"at an existing one with a new operation", vmName, op.Namespace))
		return ctrl.Result{}, nil
	}
	if msg := notOurs(in.vm, in.kv); msg != "" {
		fail(op, now, v1alpha1.OperationReasonVirtualMachineNotManaged, msg)
		return ctrl.Result{}, nil
	}
	turn := turnOf(op, in)
	if ActionOf(op) == v1alpha1.OperationMigrate {
		if ok, msg := PolicyAllows(vmName, in.vm.Spec.RunPolicy, t); !ok && op.Status.Phase != v1alpha1.OperationInProgress {
			fail(op, now, v1alpha1.OperationReasonNotApplicableForRunPolicy, msg)
			return ctrl.Result{}, nil
		}
		return r.stepMigration(ctx, op, in, turn, now)
	}
	t = ActionOf(op) // an Evict that restarts the VM is a Restart from here on
	view := ViewOf(in.kv, in.vmi)
	target := types.UID(op.Status.TargetVMIUID)

	if op.Status.Phase == v1alpha1.OperationInProgress {
		return r.followSignal(ctx, op, in, turn, view, now)
	}

	if turn.SupersededBy != "" {
		fail(op, now, v1alpha1.OperationReasonSuperseded, supersededMessage(op, in.vm, turn.SupersededBy))
		return ctrl.Result{}, nil
	}
	if signalPrepared(op) && SignalAction(t, op.Spec.Force, target, view) == Taken {
		// A pass that sent the signal may have ended before it could record it (see RULES.md, "Exactly once"):
		// send checks that on the API server's view, and records it, or acts, without the policy and phase rules.
		return r.send(ctx, op, in.vm)
	}
	if ok, msg := PolicyAllows(vmName, in.vm.Spec.RunPolicy, t); !ok {
		fail(op, now, v1alpha1.OperationReasonNotApplicableForRunPolicy, msg)
		return ctrl.Result{}, nil
	}
	if turn.WaitFor != "" {
		waitForOther(op, turn.WaitFor)
		return ctrl.Result{}, nil
	}
	verdict, msg := PhaseAllows(vmName, in.vm.Spec.RunPolicy, in.vm.Status.Phase, view.VMI, view.StartRequested, t, op.Spec.Force)
	switch verdict {
	case Refuse:
		fail(op, now, v1alpha1.OperationReasonNotApplicableForVMPhase, msg)
		return ctrl.Result{}, nil
	case Wait:
		unprepare(op)
		pending(op, v1alpha1.OperationReasonWaitingForVMPhase, msg)
		return ctrl.Result{}, nil
	}

	if r.Starts.Enabled() && (t == v1alpha1.OperationStart || t == v1alpha1.OperationRestart) {
		v, err := r.askStart(ctx, op, in.vm)
		if err != nil {
			return ctrl.Result{}, err
		}
		if !v.Granted {
			waitForStart(op, v)
			return ctrl.Result{RequeueAfter: startgate.Recheck}, nil
		}
	}

	// Its turn, and the VM is ready for it. First record which VMI the signal is about (one write), then send
	// in the next pass: a crash after the send leaves that record behind for SignalTaken.
	if !signalPrepared(op) || target != view.VMIUID {
		op.Status.TargetVMIUID = string(view.VMIUID)
		setCondition(op, v1alpha1.OperationConditionSignalSent, metav1.ConditionFalse, v1alpha1.OperationReasonSignalPending,
			fmt.Sprintf("About to ask KubeVirt to %s VirtualMachine %s", verb(op), vmName))
		pending(op, v1alpha1.OperationReasonSignalPending, fmt.Sprintf("%s of VirtualMachine %s is next", t, vmName))
		return ctrl.Result{}, nil // the status write brings the next pass
	}
	return r.send(ctx, op, in.vm)
}

// followSignal waits, for an operation whose signal KubeVirt accepted, until KubeVirt reports its target state; it
// fails the operation when a forced Stop supersedes it or its timeout passes.
func (r *Reconciler) followSignal(ctx context.Context, op *v1alpha1.VirtualMachineOperation, in inputs, turn Turn,
	view KubeVirtView, now metav1.Time) (ctrl.Result, error) {
	t, target := ActionOf(op), types.UID(op.Status.TargetVMIUID)
	switch {
	case Done(t, target, view):
		// The cache may lag behind KubeVirt (a VMI created a moment ago, a Start request written): complete
		// only on what the API server shows.
		if done, err := r.doneFresh(ctx, op); err != nil || !done {
			return ctrl.Result{RequeueAfter: retrySoon}, err
		}
		if op.Spec.Type == v1alpha1.OperationEvict {
			evictedByRestart(op, in.vmi, now)
		} else {
			complete(op, now, doneMessage(op, in.vm))
		}
	case turn.SupersededBy != "":
		fail(op, now, v1alpha1.OperationReasonSuperseded, supersededMessage(op, in.vm, turn.SupersededBy))
	case t == v1alpha1.OperationStop && view.StartRequested && !r.expired(op, now):
		// A Start written after this Stop's signal (a superseded Restart's or Start's that was already on its
		// way): KubeVirt would serve it once the VMI is gone.
		return r.dropStarts(ctx, op, in.kv)
	case t == v1alpha1.OperationStop && Overtaken(target, view) && !r.expired(op, now):
		return r.stopAgain(ctx, op)
	case r.timeout() > 0 && op.Status.SignalSentTime != nil:
		// Without a limit, an operation whose target state never comes (a VMI that cannot be scheduled, a
		// Start whose VMI keeps failing) would hold the VM's queue for good.
		left := op.Status.SignalSentTime.Add(r.timeout()).Sub(now.Time)
		if left > 0 {
			return ctrl.Result{RequeueAfter: left}, nil
		}
		fail(op, now, v1alpha1.OperationReasonTimedOut, timeoutMessage(op, in.vm, r.timeout()))
	}
	return ctrl.Result{}, nil
}

// notOurs explains why runpolicy must not act on the KubeVirt VM of vm's name: it exists and vm does not control
// it (a name conflict, or an adoption not done yet). "" means it is vm's (or not created yet).
func notOurs(vm *v1alpha1.VirtualMachine, kv *kvv1.VirtualMachine) string {
	if kv == nil || metav1.IsControlledBy(kv, vm) {
		return ""
	}
	return fmt.Sprintf("The kubevirt.io VirtualMachine %s is not managed by the runpolicy VirtualMachine %s (its Synced "+
		"condition says NameConflict): runpolicy acts only on the KubeVirt VMs it controls; annotate it with %s=true to "+
		"let runpolicy take it over, then create a new operation", kv.Name, vm.Name, "runpolicy.io/adopt")
}

// send re-reads the operation and KubeVirt's state uncached, then calls the subresource.
func (r *Reconciler) send(ctx context.Context, op *v1alpha1.VirtualMachineOperation, vm *v1alpha1.VirtualMachine) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	in, ok, err := r.freshInputs(ctx, op)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !ok {
		return ctrl.Result{RequeueAfter: retrySoon}, nil
	}
	now := r.now()
	switch SignalAction(ActionOf(op), op.Spec.Force, types.UID(op.Status.TargetVMIUID), ViewOf(in.kv, in.vmi)) {
	case Taken:
		log.Info("KubeVirt already shows the signal; recording it")
		r.signalSent(op, vm, now)
		return ctrl.Result{}, nil
	case DropStart:
		return r.dropStarts(ctx, op, in.kv)
	}

	ns, name, force := op.Namespace, op.Spec.VirtualMachineName, op.Spec.Force
	log.Info("Sending signal to KubeVirt", "type", op.Spec.Type, "force", force,
		"VirtualMachine", klog.KRef(ns, name), "targetVMI", op.Status.TargetVMIUID)
	switch ActionOf(op) {
	case v1alpha1.OperationStart:
		err = r.Lifecycle.Start(ctx, ns, name)
	case v1alpha1.OperationStop:
		err = r.Lifecycle.Stop(ctx, ns, name, force)
	default:
		err = r.Lifecycle.Restart(ctx, ns, name, force)
	}
	if err == nil {
		r.signalSent(op, vm, now)
		return ctrl.Result{}, nil
	}
	msg := fmt.Sprintf("KubeVirt did not accept the %s of VirtualMachine %s: %v", op.Spec.Type, name, err)
	if refusal.Permanent(err) {
		setCondition(op, v1alpha1.OperationConditionSignalSent, metav1.ConditionFalse, v1alpha1.OperationReasonSignalSentError, msg)
		fail(op, now, v1alpha1.OperationReasonFailed, msg)
		return ctrl.Result{}, nil
	}
	// Transient: stay Pending with the recorded target and retry with backoff.
	setCondition(op, v1alpha1.OperationConditionSignalSent, metav1.ConditionFalse, v1alpha1.OperationReasonSignalSentError, msg+"; retrying")
	pending(op, v1alpha1.OperationReasonSignalPending, msg+"; retrying")
	return ctrl.Result{}, err
}

// freshInputs reads the operation and KubeVirt's state uncached, right before a signal: ok is false when the pass
// must decide again instead (the cache was behind the operation, the VM went or is not ours, a forced Stop was
// created or another operation went in progress since the cache was read).
func (r *Reconciler) freshInputs(ctx context.Context, op *v1alpha1.VirtualMachineOperation) (inputs, bool, error) {
	fresh := &v1alpha1.VirtualMachineOperation{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(op), fresh); err != nil || fresh.ResourceVersion != op.ResourceVersion {
		return inputs{}, false, client.IgnoreNotFound(err)
	}
	in, err := r.gather(ctx, r.APIReader, op, true)
	if err != nil {
		return in, false, err
	}
	if in.vm == nil || notOurs(in.vm, in.kv) != "" {
		return in, false, nil
	}
	if turn := turnOf(op, in); turn.SupersededBy != "" || turn.WaitFor != "" {
		return in, false, nil
	}
	return in, true, nil
}

// waitForOther keeps op Pending behind the operation of its VM that runs.
func waitForOther(op *v1alpha1.VirtualMachineOperation, other string) {
	pending(op, v1alpha1.OperationReasonWaitingForOtherOperation, fmt.Sprintf(
		"Waiting for VirtualMachineOperation %s on VirtualMachine %s to finish: one operation runs at a time", other,
		op.Spec.VirtualMachineName))
}

func (r *Reconciler) signalSent(op *v1alpha1.VirtualMachineOperation, vm *v1alpha1.VirtualMachine, now metav1.Time) {
	op.Status.Phase = v1alpha1.OperationInProgress
	op.Status.SignalSentTime = &now
	setCondition(op, v1alpha1.OperationConditionSignalSent, metav1.ConditionTrue, v1alpha1.OperationReasonSignalSentSuccess,
		fmt.Sprintf("KubeVirt accepted the request to %s VirtualMachine %s", verb(op), vm.Name))
	setCondition(op, v1alpha1.OperationConditionCompleted, metav1.ConditionFalse, v1alpha1.OperationReasonInProgress,
		fmt.Sprintf("Waiting for KubeVirt to report that VirtualMachine %s %s", vm.Name, goal(ActionOf(op))))
}

// stopAgain sends an in-progress Stop's stop again, for a VMI that appeared after its signal (Overtaken), as read
// uncached. Nothing is recorded: the stop shows in KubeVirt (a Stop request for that VMI, or its deletion), which
// the next pass reads, so a crash after the call sends nothing twice.
func (r *Reconciler) stopAgain(ctx context.Context, op *v1alpha1.VirtualMachineOperation) (ctrl.Result, error) {
	in, ok, err := r.freshInputs(ctx, op)
	if err != nil || !ok {
		return ctrl.Result{RequeueAfter: retrySoon}, err
	}
	view := ViewOf(in.kv, in.vmi)
	if !Overtaken(types.UID(op.Status.TargetVMIUID), view) {
		return ctrl.Result{RequeueAfter: retrySoon}, nil // the cache was behind: decide again
	}
	ns, name := op.Namespace, op.Spec.VirtualMachineName
	ctrl.LoggerFrom(ctx).Info("A VMI started after the stop was sent; stopping it too", "VirtualMachine", klog.KRef(ns, name),
		"VirtualMachineInstance", view.VMIUID, "targetVMI", op.Status.TargetVMIUID, "force", op.Spec.Force)
	if err := r.Lifecycle.Stop(ctx, ns, name, op.Spec.Force); err != nil {
		return ctrl.Result{}, err // retried with backoff until the timeout
	}
	if r.Recorder != nil {
		r.Recorder.Eventf(op, nil, corev1.EventTypeNormal, EventStoppedAgain, "Stop", "VMI %s started after the stop of "+
			"VirtualMachine %s was sent (KubeVirt served a Start the stop had removed, or someone started it): stopped it too",
			view.VMIUID, name)
	}
	return ctrl.Result{RequeueAfter: retrySoon}, nil
}

// dropStarts removes the Start requests KubeVirt holds for the VM of a Stop, tested on the requests as read (kv), and
// has the Stop decide again: a Stop never leaves a Start behind, which KubeVirt would serve once the VMI is gone.
// The KubeVirt VM is not watched: the next pass is requeued.
func (r *Reconciler) dropStarts(ctx context.Context, op *v1alpha1.VirtualMachineOperation, kv *kvv1.VirtualMachine) (ctrl.Result, error) {
	ns, name := op.Namespace, op.Spec.VirtualMachineName
	ctrl.LoggerFrom(ctx).Info("Removing the Start request KubeVirt holds before stopping",
		"VirtualMachine", klog.KRef(ns, name), "requests", kv.Status.StateChangeRequests)
	if err := r.Lifecycle.DropStarts(ctx, ns, name, kv.Status.StateChangeRequests); err != nil {
		// Also when the requests changed since they were read (lifecycle.ErrRequestPending): decide again.
		msg := fmt.Sprintf("Could not remove the Start request KubeVirt holds for VirtualMachine %s: %v", name, err)
		if op.Status.Phase == v1alpha1.OperationInProgress {
			return ctrl.Result{}, err // retried with backoff until the timeout
		}
		setCondition(op, v1alpha1.OperationConditionSignalSent, metav1.ConditionFalse, v1alpha1.OperationReasonSignalSentError, msg)
		if refusal.Permanent(err) {
			fail(op, r.now(), v1alpha1.OperationReasonFailed, msg)
			return ctrl.Result{}, nil
		}
		pending(op, v1alpha1.OperationReasonSignalPending, msg+"; retrying")
		return ctrl.Result{}, err
	}
	if op.Status.Phase != v1alpha1.OperationInProgress {
		setCondition(op, v1alpha1.OperationConditionSignalSent, metav1.ConditionFalse, v1alpha1.OperationReasonSignalPending,
			fmt.Sprintf("Removed the Start request KubeVirt held for VirtualMachine %s; about to ask KubeVirt to %s it", name, verb(op)))
	}
	return ctrl.Result{RequeueAfter: retrySoon}, nil
}

// expired tells whether an in-progress operation's timeout passed.
func (r *Reconciler) expired(op *v1alpha1.VirtualMachineOperation, now metav1.Time) bool {
	return r.timeout() > 0 && op.Status.SignalSentTime != nil && !now.Time.Before(op.Status.SignalSentTime.Add(r.timeout()))
}

// doneFresh confirms on the API server's view that an in-progress operation reached its target state.
func (r *Reconciler) doneFresh(ctx context.Context, op *v1alpha1.VirtualMachineOperation) (bool, error) {
	if r.APIReader == nil {
		return true, nil
	}
	key := types.NamespacedName{Namespace: op.Namespace, Name: op.Spec.VirtualMachineName}
	kv, vmi := &kvv1.VirtualMachine{}, &kvv1.VirtualMachineInstance{}
	if err := getOrNil(ctx, r.APIReader, key, kv); err != nil {
		return false, err
	}
	if err := getOrNil(ctx, r.APIReader, key, vmi); err != nil {
		return false, err
	}
	if kv.Name == "" {
		kv = nil
	}
	if vmi.Name == "" {
		vmi = nil
	}
	return Done(ActionOf(op), types.UID(op.Status.TargetVMIUID), ViewOf(kv, vmi)), nil
}

func verb(op *v1alpha1.VirtualMachineOperation) string {
	v := map[v1alpha1.VirtualMachineOperationType]string{
		v1alpha1.OperationStart: "start", v1alpha1.OperationStop: "stop", v1alpha1.OperationRestart: "restart",
		v1alpha1.OperationMigrate: "migrate", v1alpha1.OperationEvict: "evict",
	}[op.Spec.Type]
	if op.Spec.Force {
		v = "force-" + v
	}
	return v
}

func goal(t v1alpha1.VirtualMachineOperationType) string {
	switch t {
	case v1alpha1.OperationStart:
		return "has a running VMI"
	case v1alpha1.OperationStop:
		return "has no running VMI"
	default:
		return "runs a new VMI"
	}
}

func doneMessage(op *v1alpha1.VirtualMachineOperation, vm *v1alpha1.VirtualMachine) string {
	switch op.Spec.Type {
	case v1alpha1.OperationStart:
		return fmt.Sprintf("VirtualMachine %s is running", vm.Name)
	case v1alpha1.OperationStop:
		return fmt.Sprintf("VirtualMachine %s is stopped", vm.Name)
	default:
		return fmt.Sprintf("VirtualMachine %s runs a new VMI", vm.Name)
	}
}

func timeoutMessage(op *v1alpha1.VirtualMachineOperation, vm *v1alpha1.VirtualMachine, limit time.Duration) string {
	return fmt.Sprintf("KubeVirt accepted the %s request, but VirtualMachine %s still reports phase %s %s later "+
		"(the operation waits until it %s); the request may still take effect: see the VM's status and events, "+
		"then create a new operation if needed", verb(op), vm.Name, vm.Status.Phase, limit, goal(ActionOf(op)))
}

func supersededMessage(op *v1alpha1.VirtualMachineOperation, vm *v1alpha1.VirtualMachine, by string) string {
	return fmt.Sprintf("Superseded by the forced Stop %s of VirtualMachine %s (runPolicy %s); create a new %s operation "+
		"once it is done if still needed", by, vm.Name, vm.Spec.RunPolicy, op.Spec.Type)
}

// recordTransition emits an Event when the phase changed in the write that just succeeded.
func (r *Reconciler) recordTransition(op *v1alpha1.VirtualMachineOperation, before *v1alpha1.VirtualMachineOperationStatus) {
	if before.Phase != op.Status.Phase && Finished(op) && op.Status.CompletionTime != nil {
		metrics.OperationFinished(string(op.Spec.Type), string(op.Status.Phase), op.CreationTimestamp.Time, op.Status.CompletionTime.Time)
	}
	if r.Recorder == nil {
		return
	}
	if before.Phase != op.Status.Phase {
		switch op.Status.Phase {
		case v1alpha1.OperationInProgress:
			r.Recorder.Eventf(op, nil, corev1.EventTypeNormal, EventSignalSent, string(op.Spec.Type), "KubeVirt accepted the %s", verb(op))
		case v1alpha1.OperationCompleted:
			r.Recorder.Eventf(op, nil, corev1.EventTypeNormal, EventCompleted, string(op.Spec.Type), "%s", conditionMessage(op))
		case v1alpha1.OperationFailed:
			r.Recorder.Eventf(op, nil, corev1.EventTypeWarning, EventFailed, string(op.Spec.Type), "%s", conditionMessage(op))
		}
	}
}

func conditionMessage(op *v1alpha1.VirtualMachineOperation) string {
	for _, c := range op.Status.Conditions {
		if c.Type == v1alpha1.OperationConditionCompleted {
			return c.Reason + ": " + c.Message
		}
	}
	return ""
}

// SetupWithManager registers the index and the controller. It watches operations (and requeues their siblings,
// which may be waiting for them), runpolicy.io VMs and KubeVirt VMIs, mapped to the VM's operations.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1alpha1.VirtualMachineOperation{}, IndexVMName,
		func(o client.Object) []string {
			return []string{o.(*v1alpha1.VirtualMachineOperation).Spec.VirtualMachineName}
		}); err != nil {
		return err
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	b := ctrl.NewControllerManagedBy(mgr)
	if r.Starts.Enabled() {
		// The start gate wakes the waiting operations whose turn came.
		woken := make(chan event.TypedGenericEvent[*v1alpha1.VirtualMachineOperation])
		r.Starts.EnqueueOp = func(key types.NamespacedName) {
			woken <- event.TypedGenericEvent[*v1alpha1.VirtualMachineOperation]{Object: &v1alpha1.VirtualMachineOperation{
				ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}}
		}
		b = b.WatchesRawSource(source.Channel(woken, &handler.TypedEnqueueRequestForObject[*v1alpha1.VirtualMachineOperation]{}))
	}
	return b.
		For(&v1alpha1.VirtualMachineOperation{}).
		Watches(&v1alpha1.VirtualMachineOperation{}, handler.EnqueueRequestsFromMapFunc(r.siblingsOf)).
		Watches(&v1alpha1.VirtualMachine{}, handler.EnqueueRequestsFromMapFunc(r.opsOfVM)).
		Watches(&kvv1.VirtualMachineInstance{}, handler.EnqueueRequestsFromMapFunc(r.opsOfVM)).
		Owns(&kvv1.VirtualMachineInstanceMigration{}).
		Named("virtualmachineoperation").
		Complete(r)
}

func (r *Reconciler) siblingsOf(ctx context.Context, o client.Object) []ctrl.Request {
	op := o.(*v1alpha1.VirtualMachineOperation)
	return r.requestsFor(ctx, op.Namespace, op.Spec.VirtualMachineName)
}

// opsOfVM maps a VM or VMI to the operations of the VM of that name.
func (r *Reconciler) opsOfVM(ctx context.Context, o client.Object) []ctrl.Request {
	return r.requestsFor(ctx, o.GetNamespace(), o.GetName())
}

func (r *Reconciler) requestsFor(ctx context.Context, ns, vm string) []ctrl.Request {
	list := &v1alpha1.VirtualMachineOperationList{}
	if err := r.List(ctx, list, client.InNamespace(ns), client.MatchingFields{IndexVMName: vm}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing VirtualMachineOperations failed", "VirtualMachine", klog.KRef(ns, vm))
		return nil
	}
	reqs := make([]ctrl.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs
}
