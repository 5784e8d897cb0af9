package vm

import (
	"context"
	"errors"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/lifecycle"
	"github.com/runpolicy/runpolicy/internal/metrics"
	"github.com/runpolicy/runpolicy/internal/policy"
	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// Labels KubeVirt puts on virt-launcher pods.
const (
	LabelLauncher  = "kubevirt.io"
	LauncherValue  = "virt-launcher"
	LabelCreatedBy = "kubevirt.io/created-by"
)

// IndexLauncherVMIUID is the cache index of launcher pods by their kubevirt.io/created-by label (the VMI's UID).
const IndexLauncherVMIUID = "launcher.vmiUID"

// powerInput gathers what the power step (policy.Step) decides from. The launcher pods are read from the cache only
// for an ended VMI whose end is not decided yet.
func (r *Reconciler) powerInput(ctx context.Context, vm *v1alpha1.VirtualMachine, kv *kvv1.VirtualMachine,
	vmi *kvv1.VirtualMachineInstance) (policy.PowerInput, error) {
	in := policy.PowerInput{Policy: vm.Spec.RunPolicy, KubeVirt: kv, Managed: kv != nil && metav1.IsControlledBy(kv, vm), VMI: vmi,
		Cause: shutdown.CauseUnknown, Status: policy.BookkeepingOf(&vm.Status), Now: r.now(), Backoff: r.backoff()}
	if vmi == nil || !vmi.IsFinal() || string(vmi.UID) == vm.Status.HandledVMIUID || string(vmi.UID) == vm.Status.RestartingVMIUID {
		return in, nil
	}
	in.RebootsStayInGuest = rebootsStayInGuest(vmi)
	var err error
	in.Cause, in.PodTerminating, err = r.launcherCause(ctx, vmi)
	return in, err
}

// launcherCause reads what the ended VMI's launcher pods recorded (the hook sidecar's termination message) and
// whether one of them is still terminating.
func (r *Reconciler) launcherCause(ctx context.Context, vmi *kvv1.VirtualMachineInstance) (shutdown.Cause, bool, error) {
	pods := &corev1.PodList{}
	// Read only, so the cache's copies are used as they are.
	if err := r.List(ctx, pods, client.InNamespace(vmi.Namespace), client.MatchingFields{IndexLauncherVMIUID: string(vmi.UID)},
		client.UnsafeDisableDeepCopy); err != nil {
		return shutdown.CauseUnknown, false, err
	}
	// Only what KubeVirt wrote counts: the launcher pods virt-controller recorded for this VMI (anyone allowed to
	// create pods can make one with the same labels), and in them only runpolicy's own sidecar container (a user's
	// sidecars, compute, or a user's entry reusing runpolicy's image write what they like).
	// virt-controller records every pod the VMI controls, so a pod made with a controller reference to the VMI gets
	// in too: when the recorded pods disagree, the cause is unknown, never guessed.
	ours := ourSidecarContainer(vmi.Annotations[AnnotationHookSidecars], r.HookSidecarImage)
	var causes []shutdown.Cause
	terminating := false
	for i := range pods.Items {
		p := &pods.Items[i]
		if _, ok := vmi.Status.ActivePods[p.UID]; !ok {
			continue
		}
		m, done := terminationMessages(p, ours)
		if c := shutdown.Parse(strings.Join(m, "\n")).Cause; c != shutdown.CauseUnknown {
			causes = append(causes, c)
		}
		if !done {
			terminating = true
		}
	}
	return agreed(causes), terminating, nil
}

// rebootsStayInGuest tells whether a guest reboot could not have ended the VMI: without any hook sidecar and
// without rebootPolicy Terminate, KubeVirt runs QEMU with on_reboot=restart.
func rebootsStayInGuest(vmi *kvv1.VirtualMachineInstance) bool {
	rp := vmi.Spec.Domain.RebootPolicy
	return vmi.Annotations[AnnotationHookSidecars] == "" && (rp == nil || *rp != kvv1.RebootPolicyTerminate)
}

// act carries out the power step's action, once the status that records it is written; kv and vmi are the cache's.
func (r *Reconciler) act(ctx context.Context, vm *v1alpha1.VirtualMachine, kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance,
	a policy.PowerAction) error {
	switch a.Kind {
	case policy.DoRestart:
		return r.restart(ctx, vm, a)
	case policy.DoCleanup:
		return r.stayStopped(ctx, vm, vmi)
	case policy.DoVerify:
		key := client.ObjectKeyFromObject(vm)
		if policy.StillEnded(vmi, types.UID(a.VMIUID)) && !policy.KubeVirtSawEnd(vmi) {
			return nil // virt-controller has not seen the VMI end: its removal of its finalizer brings the next pass
		}
		if sent, _ := r.sent.Load(key); sent != a.VMIUID && policy.PendingRestart(kv, vmi, types.UID(a.VMIUID)) == policy.RestartSend {
			// Recorded (before virt-controller saw the VMI end, or by a process that crashed) and not sent by this
			// process, whose cache was listed after any earlier process's writes: the pass that sees virt-controller's
			// finalizer go sends it without a second read. Should it have been sent after all, the request's test
			// refuses a second one (ErrRequestPending) and the deletion's precondition any other VMI.
			return r.restart(ctx, vm, a)
		}
		// Read past the cache: right after our own request, or after KubeVirt acted, the cache may lag.
		kv, fresh, err := r.readFresh(ctx, key, types.UID(a.VMIUID))
		if err != nil {
			return err
		}
		switch policy.PendingRestart(kv, fresh, types.UID(a.VMIUID)) {
		case policy.RestartSend:
			return r.restart(ctx, vm, a)
		case policy.RestartServeStale:
			// A Start request without a Stop for the ended VMI, beside it: runpolicy's own, sent before a crash cut
			// the restart short of the deletion, or one left from the previous restart, which KubeVirt trims only
			// once it sees the VMI it started neither final nor deleted, when that VMI ended first. KubeVirt never
			// serves it while the ended VMI is there (and virt-api refuses another start, "already underway");
			// without the ended VMI, KubeVirt serves it.
			ctrl.LoggerFrom(ctx).Info("KubeVirt holds a Start request beside the ended VMI: deleting the VMI so that it is served",
				"VirtualMachineInstance", klog.KObj(fresh))
			return r.cleanup(ctx, fresh)
		}
	}
	return nil
}

// readFresh reads the VMI past the cache and, while it is still the ended VMI, the KubeVirt VM too; nil for one that
// does not exist or was not read (a VMI KubeVirt already replaced or is deleting needs no second read).
func (r *Reconciler) readFresh(ctx context.Context, key client.ObjectKey, ended types.UID) (*kvv1.VirtualMachine, *kvv1.VirtualMachineInstance, error) {
	vmi := &kvv1.VirtualMachineInstance{}
	if err := r.reader().Get(ctx, key, vmi); err != nil {
		return nil, nil, client.IgnoreNotFound(err)
	}
	if !policy.StillEnded(vmi, ended) {
		return nil, vmi, nil
	}
	kv := &kvv1.VirtualMachine{}
	if err := r.reader().Get(ctx, key, kv); err != nil {
		return nil, vmi, client.IgnoreNotFound(err)
	}
	return kv, vmi, nil
}

// restart has KubeVirt start a new VMI, built from the VM's current template, in place of the ended one: by default
// with KubeVirt's Start request written directly and the ended VMI deleted (lifecycle.Client.Replace), or through
// KubeVirt's start subresource (RestartRequest). The event reports the restart once KubeVirt accepted it. The
// power step asks for it only once virt-controller has seen the VMI end (policy.KubeVirtSawEnd).
func (r *Reconciler) restart(ctx context.Context, vm *v1alpha1.VirtualMachine, a policy.PowerAction) error {
	ctrl.LoggerFrom(ctx).Info("Restarting VMI", "endedVMI", a.VMIUID)
	var err error
	if r.RestartRequest == RestartViaStartSubresource {
		err = r.Lifecycle.Start(ctx, vm.Namespace, vm.Name)
	} else {
		err = r.Lifecycle.Replace(ctx, vm.Namespace, vm.Name, types.UID(a.VMIUID))
	}
	if errors.Is(err, lifecycle.ErrRequestPending) {
		// Someone else's request came first; the next pass judges it (DoVerify).
		return err
	}
	if err != nil {
		r.Recorder.Eventf(vm, nil, corev1.EventTypeWarning, policy.EventRestartFailed, "Start", "Restart failed: %v", err)
		return err
	}
	r.sent.Store(client.ObjectKeyFromObject(vm), a.VMIUID)
	r.Recorder.Eventf(vm, nil, a.Event.Type, a.Event.Reason, "Start", "%s", a.Event.Message)
	reason := v1alpha1.ShutdownUnknown
	if ls := vm.Status.LastShutdown; ls != nil && ls.VMIUID == a.VMIUID {
		reason = ls.Source
	}
	metrics.RestartRequested(string(vm.Spec.RunPolicy), string(reason))
	return nil
}

// stayStopped deletes the ended VMI of a VM that stays stopped, after dropping a Start request KubeVirt kept beside
// it (policy.StaleStart), which KubeVirt would serve once the VMI is gone. The KubeVirt VM is read past the cache:
// a Start the cache does not show yet would start the VM against its policy.
func (r *Reconciler) stayStopped(ctx context.Context, vm *v1alpha1.VirtualMachine, vmi *kvv1.VirtualMachineInstance) error {
	kv := &kvv1.VirtualMachine{}
	if err := r.reader().Get(ctx, client.ObjectKeyFromObject(vm), kv); err != nil {
		return client.IgnoreNotFound(err)
	}
	if policy.StaleStart(kv, vmi.UID) {
		ctrl.LoggerFrom(ctx).Info("KubeVirt holds a Start request beside the ended VMI of a VM that stays stopped: dropping it",
			"VirtualMachineInstance", klog.KObj(vmi), "stateChangeRequests", kv.Status.StateChangeRequests)
		if err := r.Lifecycle.DropStarts(ctx, vm.Namespace, vm.Name, kv.Status.StateChangeRequests); err != nil {
			return err
		}
	}
	return r.cleanup(ctx, vmi)
}

// cleanup deletes a finished VMI, and only that one (UID precondition).
func (r *Reconciler) cleanup(ctx context.Context, vmi *kvv1.VirtualMachineInstance) error {
	ctrl.LoggerFrom(ctx).Info("Deleting finished VMI", "VirtualMachineInstance", klog.KObj(vmi))
	err := r.Delete(ctx, vmi, client.Preconditions{UID: ptr.To(vmi.UID)})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

// agreed is the cause all launcher pods agree on; unknown when there is none or they disagree.
func agreed(causes []shutdown.Cause) shutdown.Cause {
	if len(causes) == 0 {
		return shutdown.CauseUnknown
	}
	for _, c := range causes[1:] {
		if c != causes[0] {
			return shutdown.CauseUnknown
		}
	}
	return causes[0]
}

// terminationMessages returns the termination message of the pod's container named container (current state,
// else the last terminated state; none when container is "") and whether every container has terminated.
func terminationMessages(p *corev1.Pod, container string) ([]string, bool) {
	var msgs []string
	done := p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	allTerminated := len(p.Status.ContainerStatuses) > 0
	for _, cs := range p.Status.ContainerStatuses {
		var term *corev1.ContainerStateTerminated
		switch {
		case cs.State.Terminated != nil:
			term = cs.State.Terminated
		case cs.LastTerminationState.Terminated != nil:
			term = cs.LastTerminationState.Terminated
			allTerminated = false
		default:
			allTerminated = false
		}
		if term != nil && container != "" && cs.Name == container {
			msgs = append(msgs, term.Message)
		}
	}
	return msgs, done || allTerminated
}

func (r *Reconciler) backoff() policy.Backoff {
	if r.Backoff.Base == 0 {
		return policy.DefaultBackoff
	}
	return r.Backoff
}
