// Package vm reconciles runpolicy.io VirtualMachines into KubeVirt VirtualMachines and reports their state.
package vm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/lifecycle"
	"github.com/runpolicy/runpolicy/internal/metrics"
	"github.com/runpolicy/runpolicy/internal/policy"
	"github.com/runpolicy/runpolicy/internal/refusal"
	"github.com/runpolicy/runpolicy/internal/startgate"
)

// DefaultWorkers is the default number of VMs reconciled at once: reconciles mostly wait on the API server.
const DefaultWorkers = 4

// RestartRequest is how runpolicy asks KubeVirt for the VMI that replaces an ended one.
type RestartRequest string

const (
	// RestartViaStateChangeRequest writes KubeVirt's Start request into the KubeVirt VM's status, once
	// virt-controller has seen the VMI end, and deletes the ended VMI at once (lifecycle.Client.Replace): in the
	// pass in which it is gone, virt-controller creates the new VMI.
	RestartViaStateChangeRequest RestartRequest = "state-change-request"
	// RestartViaStartSubresource calls KubeVirt's start subresource, like virtctl start: virt-api writes
	// [Stop{ended VMI}, Start], which virt-controller serves in three passes (delete, trim the Stop, create).
	RestartViaStartSubresource RestartRequest = "start-subresource"
)

// Event reasons.
const (
	EventCreated            = "Created"
	EventAdopted            = "Adopted"
	EventRunStrategyChanged = "RunStrategyChanged"
	EventSyncFailed         = "SyncFailed"
	// EventStatusWriteFailed: the VM's status could not be written (the object is too large to store).
	EventStatusWriteFailed = "StatusWriteFailed"
	// EventForeignChangesReverted: someone changed the KubeVirt VM's spec directly; runpolicy wrote its own back.
	EventForeignChangesReverted = "ForeignChangesReverted"
	// EventRevertFailed: someone changed the KubeVirt VM's spec directly and runpolicy could not write its own back.
	EventRevertFailed = "RevertFailed"
)

// Reconciler keeps a KubeVirt VirtualMachine in line with each runpolicy.io VirtualMachine.
type Reconciler struct {
	client.Client
	Recorder recorder.EventRecorder
	// HookSidecarImage is runpolicy's hook sidecar image; empty means none is configured.
	HookSidecarImage string
	// SidecarMode decides whether the sidecar goes into VMI templates (auto: while KubeVirt's Sidecar feature gate
	// is on); empty means auto.
	SidecarMode policy.SidecarMode
	// APIReader reads past the cache where a stale read could repeat a request; nil means the cached client.
	APIReader client.Reader
	// Lifecycle asks KubeVirt for the new VMI of a restart (Replace, or its start subresource).
	Lifecycle lifecycle.Interface
	// RestartRequest is how a restart asks KubeVirt for the new VMI; empty means RestartViaStateChangeRequest.
	RestartRequest RestartRequest
	// Backoff spaces out restarts after consecutive failures; a zero Base means policy.DefaultBackoff.
	Backoff policy.Backoff
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// Workers is how many VMs are reconciled at once (never the same VM twice at once); zero means DefaultWorkers.
	Workers int
	// Starts caps how many VMs start at once (starts.go); nil means no cap.
	Starts *startgate.Gate

	// mode is the hook-sidecar decision last reported (log line, metric); see noteSidecar.
	mode struct {
		sync.Mutex
		last *policy.Sidecar
	}
	// watched is KubeVirt's configuration as the KubeVirt CR watch last saw it; see kubeVirtConfigChanged.
	watched struct {
		sync.Mutex
		seen bool
		cfg  policy.KubeVirtConfig
		sc   policy.Sidecar
	}

	// ownVM and ownKubeVirtVM remember, per VM, the resourceVersion our last write replaced (see writeTracker).
	ownVM, ownKubeVirtVM writeTracker
	// sent remembers, per VM, the ended VMI whose restart this process last sent (types.NamespacedName → string).
	// A recorded restart that this process has not sent is sent from the cache (act, DoVerify); one it has sent is
	// checked past the cache first, which may lag behind KubeVirt's answer to it.
	sent sync.Map
}

// writeTracker remembers, per object, the resourceVersion that the reconciler's last write to it replaced ("" for
// an object it created). Until the cache shows a different version, the cache is behind that write: a pass would
// decide again from the old state, and its optimistic status write would only conflict. A write the cache has not
// shown within cacheCatchUp is forgotten (the object may have changed in a way that brings that version back into
// view, e.g. deleted right after its creation), so a pass is never held back for long.
type writeTracker struct{ m sync.Map }

type ownWrite struct {
	replaced string
	at       time.Time
}

func (w *writeTracker) wrote(key types.NamespacedName, replaced string) {
	w.m.Store(key, ownWrite{replaced: replaced, at: time.Now()})
}

func (w *writeTracker) forget(key types.NamespacedName) { w.m.Delete(key) }

// behind tells whether the cache's resourceVersion of the object ("" when it is not in the cache) is still the
// one replaced by our last write.
func (w *writeTracker) behind(key types.NamespacedName, rv string) bool {
	v, ok := w.m.Load(key)
	if !ok {
		return false
	}
	if ow := v.(ownWrite); rv == ow.replaced && time.Since(ow.at) < cacheCatchUp {
		return true
	}
	w.m.CompareAndDelete(key, v)
	return false
}

// retrySoon is how soon a pass whose status write conflicted, or whose cache was behind, runs again: the watch
// event of the newer object usually comes first.
const retrySoon = 200 * time.Millisecond

// cacheCatchUp bounds how long a pass waits for the cache to show runpolicy's own write.
const cacheCatchUp = 10 * time.Second

// cacheRecheck is the safety net while the cache is behind our own write: normally the watch event of that write
// brings the next pass first.
const cacheRecheck = time.Second

// +kubebuilder:rbac:groups=runpolicy.io,resources=virtualmachines,verbs=get;list;watch
// +kubebuilder:rbac:groups=runpolicy.io,resources=virtualmachines/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=runpolicy.io,resources=virtualmachines/finalizers,verbs=update
// +kubebuilder:rbac:groups=kubevirt.io,resources=virtualmachines,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=kubevirt.io,resources=virtualmachines/status,verbs=patch
// +kubebuilder:rbac:groups=kubevirt.io,resources=virtualmachineinstances,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=subresources.kubevirt.io,resources=virtualmachines/start;virtualmachines/stop;virtualmachines/restart,verbs=update
// +kubebuilder:rbac:groups=kubevirt.io,resources=kubevirts,verbs=get;list;watch
// +kubebuilder:rbac:groups=runpolicy.io,resources=virtualmachineoperations,verbs=create
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile fetches the VM, its KubeVirt VM and VMI, applies the desired KubeVirt VM and writes status once.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)

	vm := &v1alpha1.VirtualMachine{}
	if err := r.Get(ctx, req.NamespacedName, vm); err != nil {
		if apierrors.IsNotFound(err) {
			r.ownVM.forget(req.NamespacedName)
			r.ownKubeVirtVM.forget(req.NamespacedName)
			r.sent.Delete(req.NamespacedName)
			r.Starts.Forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	kv, err := r.getKubeVirtVM(ctx, req.NamespacedName)
	if err != nil {
		return ctrl.Result{}, err
	}
	kvVersion := ""
	if kv != nil {
		kvVersion = kv.ResourceVersion
	}
	if r.ownVM.behind(req.NamespacedName, vm.ResourceVersion) || r.ownKubeVirtVM.behind(req.NamespacedName, kvVersion) {
		log.V(1).Info("Cache is behind runpolicy's own write, waiting for it")
		return ctrl.Result{RequeueAfter: cacheRecheck}, nil
	}
	vmi, err := r.getVMI(ctx, req.NamespacedName)
	if err != nil {
		return ctrl.Result{}, err
	}
	kvcfg, sc, err := r.sidecarPlan(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}

	before := vm.Status.DeepCopy()
	p, err := r.decide(ctx, vm, kv, vmi, kvcfg, sc)
	if err != nil {
		return ctrl.Result{}, err
	}
	kv, step, turn, syncErr, powerErr := p.kv, p.step, p.turn, p.syncErr, p.powerErr
	if kv != nil && !metav1.IsControlledBy(kv, vm) {
		// A KubeVirt VM of the same name that is not ours (a name conflict): its state is its owner's business, and
		// nothing of it shows in this VM's status.
		kv, vmi = nil, nil
	}
	ending := r.mirrorKubeVirt(vm, kv, vmi, step, kvcfg, sc)
	vm.Status.StartQueuePosition = 0
	var startWait time.Duration
	if !turn.Granted {
		waitForStart(vm, turn, kv, p.firstWait)
		step.Action = policy.PowerAction{Kind: policy.DoNothing} // the restart's request waits for the slot
		startWait = startgate.Recheck
	}
	r.observeStart(vm, p.askedStart)
	var autoOp *v1alpha1.VirtualMachineOperation
	var autoWait time.Duration
	if vm.DeletionTimestamp == nil && powerErr == nil && step.Action.Kind == policy.DoNothing {
		autoOp, autoWait = automaticRestart(vm, vmi, r.now())
	}
	if syncErr == nil {
		vm.Status.ObservedGeneration = vm.Generation
	}

	// One status write, and only then the action it records (fetch → decide → write → act).
	if !equality.Semantic.DeepEqual(before, &vm.Status) {
		replaced := vm.ResourceVersion
		if err := r.Status().Update(ctx, vm); err != nil {
			if apierrors.IsConflict(err) {
				log.V(1).Info("Status update conflicted, requeueing")
				return ctrl.Result{RequeueAfter: retrySoon}, nil
			}
			if refusal.TooLarge(err) {
				// The object is at etcd's size limit (a huge template): its status cannot say so, an Event and the
				// metric do, and retrying at full rate would only load the API server.
				metrics.StatusWriteFailed("TooLarge")
				r.Recorder.Eventf(vm, nil, corev1.EventTypeWarning, EventStatusWriteFailed, "UpdateStatus",
					"The VirtualMachine's status cannot be written: the object is too large for the API server (%v); "+
						"shrink spec.template (e.g. move cloud-init user data into a Secret)", err)
				return ctrl.Result{RequeueAfter: tooLargeRetry}, nil
			}
			metrics.StatusWriteFailed("Other")
			return ctrl.Result{}, err
		}
		if vm.ResourceVersion != replaced { // a write that changed nothing leaves the version as it was
			r.ownVM.wrote(req.NamespacedName, replaced)
		}
	}
	// Events only once the status that records them is written: a conflict above sends nothing, and the next pass
	// decides (and reports) again.
	if e := step.Event; e != nil {
		r.Recorder.Eventf(vm, vmi, e.Type, e.Reason, "Shutdown", "%s", e.Message)
	}
	if powerErr != nil {
		return ctrl.Result{}, powerErr
	}
	if err := r.act(ctx, vm, kv, vmi, step.Action); err != nil {
		if errors.Is(err, lifecycle.ErrRequestPending) {
			log.V(1).Info("KubeVirt holds another request, deciding again", "error", err)
			return ctrl.Result{RequeueAfter: retrySoon}, nil
		}
		return ctrl.Result{}, err
	}
	if autoOp != nil {
		if err := r.createAutomaticRestart(ctx, vm, autoOp); err != nil {
			return ctrl.Result{}, err
		}
	}
	var transient transientError
	if errors.As(syncErr, &transient) {
		return ctrl.Result{}, syncErr
	}
	return ctrl.Result{RequeueAfter: soonest(step.Requeue, autoWait, ending, startWait)}, nil
}

// pass is what decide made of a VM: the KubeVirt VM after the apply, the power step, and the start gate's answer.
type pass struct {
	kv   *kvv1.VirtualMachine
	step policy.PowerStep
	// turn is the start gate's answer; askedStart whether the pass asked it, firstWait whether a first start waits.
	turn                  startgate.Verdict
	askedStart, firstWait bool
	// syncErr is the apply's failure, powerErr the power step's (status is written before either is returned).
	syncErr, powerErr error
}

// decide applies the desired KubeVirt VM and takes the power step, of a VM not being deleted. A start, first or
// after a VMI ended, waits for a slot while the operator caps starts (starts.go): a first start by leaving the
// KubeVirt VM as it is, a restart by not sending its request (its intent is recorded).
func (r *Reconciler) decide(ctx context.Context, vm *v1alpha1.VirtualMachine, kv *kvv1.VirtualMachine,
	vmi *kvv1.VirtualMachineInstance, kvcfg policy.KubeVirtConfig, sc policy.Sidecar) (pass, error) {
	p := pass{kv: kv, step: policy.PowerStep{Action: policy.PowerAction{Kind: policy.DoNothing}}, turn: startgate.Verdict{Granted: true}}
	if vm.DeletionTimestamp != nil {
		return p, nil
	}
	var err error
	strategy, current := desiredStrategy(vm, kv, vmi, r.Starts.Enabled())
	if r.Starts.Enabled() && firstStart(vm, kv, vmi, strategy, current) {
		if p.turn, err = r.askStart(ctx, vm, false); err != nil {
			return p, err
		}
		p.askedStart, p.firstWait = true, !p.turn.Granted
	}
	if p.turn.Granted {
		p.kv, p.syncErr = r.syncKubeVirtVM(ctx, vm, kv, strategy, current, kvcfg, sc)
	}
	// A failed read for the power step must not drop the status of an apply that succeeded: the step is not
	// taken, status is written and the error retried after.
	var in policy.PowerInput
	if in, p.powerErr = r.powerInput(ctx, vm, p.kv, vmi); p.powerErr != nil {
		return p, nil
	}
	p.step = policy.Step(in)
	p.step.Status.Into(&vm.Status)
	if d := p.step.Decided; d != nil {
		ctrl.LoggerFrom(ctx).Info("VMI ended", "VirtualMachineInstance", klog.KObj(vmi), "source", d.Source, "action", d.Action)
	}
	if r.Starts.Enabled() && p.turn.Granted && restartNeedsSlot(vm, vmi) {
		if p.turn, err = r.askStart(ctx, vm, true); err != nil {
			return p, err
		}
		p.askedStart = true
	}
	return p, nil
}

// mirrorKubeVirt fills the parts of status that follow from the KubeVirt VM and VMI, and returns how long a VMI's end
// is still awaited (zero: it is not). While a VMI's end is awaited or judged, status is left as it reads: what
// KubeVirt passes through meanwhile (the launcher pod terminating, the VMI final) would cost a write each before the
// one that records the end.
func (r *Reconciler) mirrorKubeVirt(vm *v1alpha1.VirtualMachine, kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance,
	step policy.PowerStep, kvcfg policy.KubeVirtConfig, sc policy.Sidecar) time.Duration {
	ending := policy.Ending(vmi, r.now())
	if !step.Judging && ending == 0 {
		deriveStatus(vm, kv, vmi, templateHashOf(vm), r.now())
	}
	r.setRebootCondition(vm, vmi, kvcfg, sc)
	return ending
}

// soonest is the shortest of the delays that are set (zero: none).
func soonest(delays ...time.Duration) time.Duration {
	var d time.Duration
	for _, x := range delays {
		if x > 0 && (d == 0 || x < d) {
			d = x
		}
	}
	return d
}

func (r *Reconciler) reader() client.Reader {
	if r.APIReader != nil {
		return r.APIReader
	}
	return r.Client
}

func (r *Reconciler) now() time.Time {
	if r.Clock != nil {
		return r.Clock()
	}
	return time.Now()
}

// tooLargeRetry is how often a VM whose objects are too large for the API server is looked at again (a spec
// change brings a pass at once).
const tooLargeRetry = 10 * time.Minute

// transientError marks a sync failure worth retrying with backoff (as opposed to a refusal that only a spec
// change can fix).
type transientError struct{ error }

func (e transientError) Unwrap() error { return e.error }

// syncKubeVirtVM applies the desired KubeVirt VM, on runStrategy strategy (current is the one kv has:
// desiredStrategy), and records the Synced condition. It returns the KubeVirt VM as the server has it afterwards.
func (r *Reconciler) syncKubeVirtVM(ctx context.Context, vm *v1alpha1.VirtualMachine, kv *kvv1.VirtualMachine,
	strategy, current kvv1.VirtualMachineRunStrategy, kvcfg policy.KubeVirtConfig, sc policy.Sidecar) (*kvv1.VirtualMachine, error) {
	log := ctrl.LoggerFrom(ctx)

	adopting := false
	if kv != nil && !metav1.IsControlledBy(kv, vm) {
		if kv.Annotations[AnnotationAdopt] != "true" {
			msg := fmt.Sprintf("A kubevirt.io VirtualMachine named %s already exists and is not managed by this VirtualMachine; "+
				"delete it, or annotate it with %s=true to let runpolicy take it over", vm.Name, AnnotationAdopt)
			setCondition(vm, v1alpha1.ConditionSynced, metav1.ConditionFalse, v1alpha1.ReasonNameConflict, msg)
			return kv, errors.New(msg)
		}
		adopting = true
	}

	hookImage := ""
	if sc.Add {
		hookImage = r.HookSidecarImage
	}
	inputs := applyInputs{UID: string(vm.UID), SpecHash: specHashOf(vm), RunStrategy: string(strategy), HookImage: hookImage,
		RebootTerminate: policy.SetRebootPolicy(vm.Spec.RunPolicy, sc, kvcfg, userRebootPolicy(vm)), Format: applyFormat}
	// Skip the write when the KubeVirt VM is as runpolicy last applied it: same inputs (hash), no spec change by
	// anyone since (generation), and the labels and annotations runpolicy sets still there (a metadata edit bumps no
	// generation). A reconcile then costs no API write at all.
	if kv != nil && !adopting && kv.Annotations[AnnotationAppliedHash] == inputs.hash() && kv.Generation == vm.Status.KubeVirtGeneration &&
		ownMetadataIntact(kv, vm) {
		setCondition(vm, v1alpha1.ConditionSynced, metav1.ConditionTrue, v1alpha1.ReasonSynced,
			fmt.Sprintf("KubeVirt VirtualMachine is up to date (runStrategy %s)", strategy))
		return kv, nil
	}
	// The cache keeps no template: applying needs the VM as the API server has it.
	full := vm
	if trimmed(vm) {
		full = &v1alpha1.VirtualMachine{}
		if err := r.reader().Get(ctx, client.ObjectKeyFromObject(vm), full); err != nil {
			return kv, transientError{err}
		}
		inputs.SpecHash = SpecHash(&full.Spec)
	}
	desired, err := desiredKubeVirtVM(full, strategy, hookImage, inputs.RebootTerminate)
	if err != nil {
		setCondition(vm, v1alpha1.ConditionSynced, metav1.ConditionFalse, v1alpha1.ReasonApplyFailed, err.Error())
		return kv, err
	}
	obj, err := applyObject(desired)
	if err != nil {
		return kv, transientError{err}
	}
	obj.SetAnnotations(mergeMaps(obj.GetAnnotations(), map[string]string{AnnotationAppliedHash: inputs.hash()}))
	if kv == nil {
		log.Info("Creating KubeVirt VirtualMachine", "runStrategy", strategy)
	} else if current != strategy {
		log.Info("Changing runStrategy", "from", current, "to", strategy)
	}
	replaced := ""
	if kv != nil {
		replaced = kv.ResourceVersion
	}
	wantSpec, _ := runtime.DeepCopyJSON(obj.Object)["spec"].(map[string]any)
	if err := r.Apply(ctx, client.ApplyConfigurationFromUnstructured(obj), client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		msg := fmt.Sprintf("Applying the KubeVirt VirtualMachine failed: %v", err)
		if !isSyncFailure(vm, msg) {
			r.Recorder.Eventf(vm, nil, corev1.EventTypeWarning, EventSyncFailed, "Apply", "%s", msg)
		}
		setCondition(vm, v1alpha1.ConditionSynced, metav1.ConditionFalse, v1alpha1.ReasonApplyFailed, msg)
		if refusal.Permanent(err) {
			log.Info("KubeVirt refused the VirtualMachine", "reason", err.Error())
			return kv, err // only a spec change helps: no retry loop
		}
		return kv, transientError{err}
	}
	// runpolicy owns the KubeVirt VM: what others added to its spec (server-side apply keeps it) is reverted, so
	// the next boot is the runpolicy VM's spec and nothing else.
	if err := r.revertForeignChanges(ctx, vm, obj, wantSpec); err != nil {
		return kv, transientError{err}
	}
	applied := &kvv1.VirtualMachine{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, applied); err != nil {
		return kv, transientError{err}
	}
	if applied.ResourceVersion != replaced {
		r.ownKubeVirtVM.wrote(client.ObjectKeyFromObject(vm), replaced)
	}
	switch {
	case kv == nil:
		r.Recorder.Eventf(vm, applied, corev1.EventTypeNormal, EventCreated, "Create",
			"Created KubeVirt VirtualMachine with runStrategy %s", strategy)
	case adopting:
		r.Recorder.Eventf(vm, applied, corev1.EventTypeNormal, EventAdopted, "Adopt",
			"Took over the existing KubeVirt VirtualMachine, runStrategy %s", strategy)
	case current != strategy:
		r.Recorder.Eventf(vm, applied, corev1.EventTypeNormal, EventRunStrategyChanged, "Update",
			"Changed KubeVirt runStrategy from %s to %s", current, strategy)
	}
	vm.Status.KubeVirtGeneration = applied.Generation
	setCondition(vm, v1alpha1.ConditionSynced, metav1.ConditionTrue, v1alpha1.ReasonSynced,
		fmt.Sprintf("KubeVirt VirtualMachine is up to date (runStrategy %s)", strategy))
	return applied, nil
}

// desiredStrategy is the runStrategy runpolicy applies to the KubeVirt VM kv (nil: none yet), and the one kv has;
// capped tells whether the operator caps starts (policy.Rendered).
func desiredStrategy(vm *v1alpha1.VirtualMachine, kv *kvv1.VirtualMachine,
	vmi *kvv1.VirtualMachineInstance, capped bool) (strategy, current kvv1.VirtualMachineRunStrategy) {
	entering := true
	if kv != nil {
		if kv.Spec.RunStrategy != nil {
			current = *kv.Spec.RunStrategy
		} else if kv.Spec.Running != nil {
			current = kvv1.RunStrategyHalted
			if *kv.Spec.Running {
				current = kvv1.RunStrategyAlways
			}
		}
		entering = kv.Annotations[AnnotationRunPolicy] != string(vm.Spec.RunPolicy)
	}
	p := policy.Rendered(vm.Spec.RunPolicy, capped)
	return policy.RunStrategy(p, policy.Bootstrapping(p, entering, current, policy.VMIActive(vmi))), current
}

// revertForeignChanges writes runpolicy's spec back over what others added to the KubeVirt VM obj (server-side
// apply keeps their fields), so that its next boot is the runpolicy VM's spec and nothing else; obj is the server's
// answer to the apply and becomes the server's answer to the revert. A revert that fails says so in the Synced
// condition and an Event: the next start would boot the foreign spec.
func (r *Reconciler) revertForeignChanges(ctx context.Context, vm *v1alpha1.VirtualMachine, obj *unstructured.Unstructured,
	wantSpec map[string]any) error {
	liveSpec, _ := obj.Object["spec"].(map[string]any)
	foreign := foreignFields(wantSpec, liveSpec)
	if len(foreign) == 0 {
		return nil
	}
	if err := r.revertSpec(ctx, obj, revertedSpec(wantSpec, liveSpec)); err != nil {
		if apierrors.IsConflict(err) {
			return err // someone wrote in between: the next pass looks again
		}
		msg := fmt.Sprintf("Changes made to the KubeVirt VirtualMachine outside runpolicy (%s) could not be reverted: %v",
			summarize(foreign, 5), err)
		if !isSyncFailure(vm, msg) {
			r.Recorder.Eventf(vm, nil, corev1.EventTypeWarning, EventRevertFailed, "Patch", "%s", msg)
		}
		setCondition(vm, v1alpha1.ConditionSynced, metav1.ConditionFalse, v1alpha1.ReasonRevertFailed, msg)
		return err
	}
	ctrl.LoggerFrom(ctx).Info("Reverted changes made to the KubeVirt VirtualMachine outside runpolicy", "fields", foreign)
	r.Recorder.Eventf(vm, nil, corev1.EventTypeWarning, EventForeignChangesReverted, "Patch",
		"Reverted changes made to the KubeVirt VirtualMachine outside runpolicy: %s", summarize(foreign, 5))
	return nil
}

func isSyncFailure(vm *v1alpha1.VirtualMachine, msg string) bool {
	for _, c := range vm.Status.Conditions {
		if c.Type == v1alpha1.ConditionSynced {
			return c.Status == metav1.ConditionFalse && c.Message == msg
		}
	}
	return false
}

func (r *Reconciler) getKubeVirtVM(ctx context.Context, key types.NamespacedName) (*kvv1.VirtualMachine, error) {
	kv := &kvv1.VirtualMachine{}
	if err := r.Get(ctx, key, kv); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	return kv, nil
}

func (r *Reconciler) getVMI(ctx context.Context, key types.NamespacedName) (*kvv1.VirtualMachineInstance, error) {
	vmi := &kvv1.VirtualMachineInstance{}
	if err := r.Get(ctx, key, vmi); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	return vmi, nil
}

// SetupWithManager registers the controller: it watches our VMs, the KubeVirt VMs and VMIs of the same name,
// and KubeVirt's launcher pods.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.APIReader == nil {
		// The cached runpolicy VMs carry no template: applying one reads it from the API server.
		r.APIReader = mgr.GetAPIReader()
	}
	// Launcher pods by their VMI's UID: a label selector alone would scan every launcher pod of the namespace on
	// each decision.
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &corev1.Pod{}, IndexLauncherVMIUID,
		func(o client.Object) []string {
			if uid := o.GetLabels()[LabelCreatedBy]; uid != "" {
				return []string{uid}
			}
			return nil
		}); err != nil {
		return err
	}
	b := ctrl.NewControllerManagedBy(mgr)
	if r.Starts.Enabled() {
		// The start gate wakes the waiting VMs whose turn came.
		woken := make(chan event.TypedGenericEvent[*v1alpha1.VirtualMachine])
		r.Starts.Enqueue = func(key types.NamespacedName) {
			woken <- event.TypedGenericEvent[*v1alpha1.VirtualMachine]{
				Object: &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}}
		}
		b = b.WatchesRawSource(source.Channel(woken, &handler.TypedEnqueueRequestForObject[*v1alpha1.VirtualMachine]{}))
	}
	return b.
		For(&v1alpha1.VirtualMachine{}).
		// By name rather than by owner: a KubeVirt VM runpolicy does not own yet (a name conflict, an adoption)
		// matters too.
		Watches(&kvv1.VirtualMachine{}, handler.EnqueueRequestsFromMapFunc(sameName)).
		Watches(&kvv1.VirtualMachineInstance{}, handler.EnqueueRequestsFromMapFunc(sameName)).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(launcherPodVM)).
		// KubeVirt's configuration (its Sidecar feature gate) decides what every VM's KubeVirt VM looks like.
		Watches(&kvv1.KubeVirt{}, handler.EnqueueRequestsFromMapFunc(r.kubeVirtConfigChanged)).
		Named("virtualmachine").
		WithOptions(controller.Options{MaxConcurrentReconciles: cmp.Or(max(r.Workers, 0), DefaultWorkers)}).
		Complete(r)
}

// launcherPodVM maps a virt-launcher pod to the VM of the same name as its VMI, the pod's controller owner.
// KubeVirt's vm.kubevirt.io/name label is no guide: it holds the VMI's hostname (spec.hostname, or the name cut at
// the first dot), not its name.
func launcherPodVM(_ context.Context, o client.Object) []ctrl.Request {
	ref := metav1.GetControllerOfNoCopy(o)
	if ref == nil || ref.Kind != "VirtualMachineInstance" || ref.Name == "" {
		return nil
	}
	return []ctrl.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: ref.Name}}}
}

func sameName(_ context.Context, o client.Object) []ctrl.Request {
	return []ctrl.Request{{NamespacedName: client.ObjectKeyFromObject(o)}}
}
