package kubevirt

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Launcher pod names and labels, as KubeVirt's template service renders them
// (kubevirt/kubevirt pkg/virt-controller/services/template.go).
const (
	launcherContainerCompute = "compute"
	launcherImage            = "quay.io/kubevirt/virt-launcher:v1.9.0"
	// HookSidecarsAnnotation is KubeVirt's hooks.kubevirt.io/hookSidecars (JSON list of sidecars).
	HookSidecarsAnnotation = "hooks.kubevirt.io/hookSidecars"
	// HookSidecarContainerPrefix names the sidecar containers hook-sidecar-0, hook-sidecar-1, ...
	HookSidecarContainerPrefix = "hook-sidecar-"
)

// vmiController plays the VMI half of virt-controller (pkg/virt-controller/watch/vmi/vmi.go: launcher pod
// creation, Pending→Scheduling→Scheduled, "pod vanished" → Failed, finalizers) and virt-handler
// (pkg/virt-handler/vm.go: Scheduled→Running, domain gone → Succeeded/Failed, graceful or forced shutdown on
// deletion). The guest itself is played by the StandIn's Guest* helpers, which end the launcher pod the way QEMU and
// the hook sidecar would.
type vmiController struct {
	s *StandIn
}

func (r *vmiController) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	c := r.s.client
	vmi, err := r.s.getVMI(ctx, req.Namespace, req.Name)
	if err != nil || vmi == nil {
		return ctrl.Result{}, err
	}
	pods, err := r.s.launcherPods(ctx, vmi)
	if err != nil {
		return ctrl.Result{}, err
	}
	var pod *corev1.Pod
	if len(pods) > 0 {
		pod = &pods[0]
	}
	orig := vmi.DeepCopy()

	if vmi.DeletionTimestamp != nil {
		return ctrl.Result{}, r.shutdown(ctx, vmi, pods)
	}
	if !containsString(vmi.Finalizers, virtv1.VirtualMachineInstanceFinalizer) && !vmi.IsFinal() {
		// virt-api's VMI mutator / virt-controller put foregroundDeleteVirtualMachine on every VMI.
		if err := patchFinalizers(ctx, c, vmi, append(append([]string{}, vmi.Finalizers...), virtv1.VirtualMachineInstanceFinalizer)); err != nil {
			return ctrl.Result{}, err
		}
		orig = vmi.DeepCopy()
	}

	switch {
	case vmi.IsUnprocessed():
		if pod == nil {
			if err := c.Create(ctx, launcherPod(vmi)); err != nil {
				return ctrl.Result{}, err
			}
			vmi.Status.Phase = virtv1.Pending
		} else {
			vmi.Status.Phase = virtv1.Scheduling
		}
	case vmi.IsScheduling():
		switch {
		case pod == nil:
			// someone other than the controller deleted the pod unexpectedly
			vmi.Status.Phase = virtv1.Failed
		case podDownOrGoingDown(pod):
			vmi.Status.Phase = virtv1.Failed
		case podReady(pod):
			// the pod is ready: hand the VMI over to virt-handler on that node
			vmi.Status.Phase = virtv1.Scheduled
			vmi.Status.NodeName = pod.Spec.NodeName
			if err := r.setNodeLabel(ctx, vmi, pod.Spec.NodeName); err != nil {
				return ctrl.Result{}, err
			}
		}
	case vmi.IsScheduled():
		switch {
		case pod == nil:
			vmi.Status.Phase = virtv1.Failed
		case podTerminated(pod):
			vmi.Status.Phase = domainEndPhase(pod)
		case pod.DeletionTimestamp != nil:
			// the kubelet is ending the pod; the VMI fails once it is gone
		case r.s.takeStartFailure(vmi):
			// virt-handler fails to start the domain: virt-launcher exits with an error, the VMI never runs.
			if err := r.s.terminatePod(ctx, pod, nil, 1); err != nil {
				return ctrl.Result{}, err
			}
			vmi.Status.Phase = virtv1.Failed
		default:
			// virt-handler started the domain
			vmi.Status.Phase = virtv1.Running
			vmi.Status.ActivePods = map[types.UID]string{pod.UID: pod.Spec.NodeName}
			vmi.Status.LauncherContainerImageVersion = launcherImage
			vmi.Status.GuestOSInfo = virtv1.VirtualMachineInstanceGuestOSInfo{}
			vmi.Status.Interfaces = []virtv1.VirtualMachineInstanceNetworkInterface{{IP: pod.Status.PodIP, IPs: []string{pod.Status.PodIP}, Name: "default", InfoSource: "domain, guest-agent"}}
			setVMICondition(vmi, virtv1.VirtualMachineInstanceCondition{Type: virtv1.VirtualMachineInstanceReady, Status: corev1.ConditionTrue})
		}
	case vmi.IsRunning():
		switch {
		case pod == nil:
			// vmi.go: "if !vmiPodExists { vmiCopy.Status.Phase = virtv1.Failed }"
			vmi.Status.Phase = virtv1.Failed
		case podTerminated(pod) && pod.DeletionTimestamp == nil:
			// QEMU exited: virt-handler reports the domain's end (Shutoff → Succeeded, Crashed → Failed).
			vmi.Status.Phase = domainEndPhase(pod)
		}
	case vmi.IsFinal():
		if pod == nil {
			// All pods are gone: virt-controller drops its own finalizer.
			if err := patchFinalizers(ctx, c, vmi, removeString(vmi.Finalizers, virtv1.VirtualMachineInstanceFinalizer)); err != nil {
				return ctrl.Result{}, err
			}
			orig = vmi.DeepCopy()
		}
	}
	if vmi.IsFinal() {
		ready := virtv1.VirtualMachineInstanceCondition{Type: virtv1.VirtualMachineInstanceReady, Status: corev1.ConditionFalse,
			Reason: virtv1.PodTerminatingReason, Message: "The Pod is terminating"}
		if pod == nil {
			ready.Reason, ready.Message = "PodNotExists", "virt-launcher pod does not exist"
		}
		setVMICondition(vmi, ready)
	}
	return ctrl.Result{}, r.writeStatus(ctx, orig, vmi)
}

// shutdown handles a VMI marked for deletion: virt-handler shuts the domain down (ACPI within the grace period,
// or destroys it when terminationGracePeriodSeconds is 0), virt-launcher exits, virt-controller deletes the launcher
// pods, the VMI ends Succeeded and its foregroundDeleteVirtualMachine finalizer goes once no pod is left.
func (r *vmiController) shutdown(ctx context.Context, vmi *virtv1.VirtualMachineInstance, pods []corev1.Pod) error {
	for i := range pods {
		pod := &pods[i]
		if !podTerminated(pod) {
			events := []string{}
			if grace := vmiGracePeriod(vmi); grace > 0 && vmi.IsRunning() {
				// the guest answers the ACPI power button; libvirt then ends QEMU
				events = append(events, "guest-shutdown")
			}
			events = append(events, "host-signal")
			if err := r.s.terminatePod(ctx, pod, events, 0); err != nil {
				return err
			}
		}
		if pod.DeletionTimestamp == nil {
			grace := vmiGracePeriod(vmi)
			if err := r.s.client.Delete(ctx, pod, client.GracePeriodSeconds(grace)); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
	}
	orig := vmi.DeepCopy()
	if !vmi.IsFinal() {
		vmi.Status.Phase = virtv1.Succeeded
		setVMICondition(vmi, virtv1.VirtualMachineInstanceCondition{Type: virtv1.VirtualMachineInstanceReady,
			Status: corev1.ConditionFalse, Reason: virtv1.PodTerminatingReason, Message: "The Pod is terminating"})
	}
	if err := r.writeStatus(ctx, orig, vmi); err != nil {
		return err
	}
	if len(pods) == 0 && containsString(vmi.Finalizers, virtv1.VirtualMachineInstanceFinalizer) {
		return patchFinalizers(ctx, r.s.client, vmi, removeString(vmi.Finalizers, virtv1.VirtualMachineInstanceFinalizer))
	}
	return nil
}

func (r *vmiController) writeStatus(ctx context.Context, orig, vmi *virtv1.VirtualMachineInstance) error {
	if orig.Status.Phase != vmi.Status.Phase {
		vmi.Status.PhaseTransitionTimestamps = append(vmi.Status.PhaseTransitionTimestamps,
			virtv1.VirtualMachineInstancePhaseTransitionTimestamp{Phase: vmi.Status.Phase, PhaseTransitionTimestamp: metav1.Now()})
	}
	if equalJSON(orig.Status, vmi.Status) {
		return nil
	}
	err := r.s.client.Status().Update(ctx, vmi)
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (r *vmiController) setNodeLabel(ctx context.Context, vmi *virtv1.VirtualMachineInstance, node string) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{virtv1.NodeNameLabel: node}}})
	status := vmi.Status.DeepCopy()
	if err := r.s.client.Patch(ctx, vmi, client.RawPatch("application/merge-patch+json", patch)); err != nil {
		return err
	}
	vmi.Status = *status
	return nil
}

// domainEndPhase maps how the launcher pod ended to the VMI phase virt-handler reports: a clean QEMU exit
// (guest poweroff, reset with on_reboot=destroy, ACPI shutdown) is Succeeded, anything else Failed.
func domainEndPhase(pod *corev1.Pod) virtv1.VirtualMachineInstancePhase {
	if pod.Status.Phase == corev1.PodSucceeded {
		return virtv1.Succeeded
	}
	return virtv1.Failed
}

func vmiGracePeriod(vmi *virtv1.VirtualMachineInstance) int64 {
	if vmi.Spec.TerminationGracePeriodSeconds != nil {
		return *vmi.Spec.TerminationGracePeriodSeconds
	}
	return virtv1.DefaultGracePeriodSeconds
}

func setVMICondition(vmi *virtv1.VirtualMachineInstance, c virtv1.VirtualMachineInstanceCondition) {
	now := metav1.Now()
	for i := range vmi.Status.Conditions {
		old := &vmi.Status.Conditions[i]
		if old.Type != c.Type {
			continue
		}
		if old.Status != c.Status || old.Reason != c.Reason || old.Message != c.Message {
			c.LastProbeTime, c.LastTransitionTime = now, now
			*old = c
		}
		return
	}
	c.LastProbeTime, c.LastTransitionTime = now, now
	vmi.Status.Conditions = append(vmi.Status.Conditions, c)
}

func podTerminated(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

func podDownOrGoingDown(pod *corev1.Pod) bool {
	return podTerminated(pod) || pod.DeletionTimestamp != nil
}

func podReady(pod *corev1.Pod) bool {
	if pod.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

type hookSidecar struct {
	Image string   `json:"image"`
	Args  []string `json:"args,omitempty"`
}

// launcherPodName is the name kube-apiserver makes of KubeVirt's generateName "virt-launcher-<vmi>-" (names.
// SimpleNameGenerator: the prefix cut to 58 characters, then 5 characters of utilrand's alphabet), except that the 5
// characters come from a hash of the VMI's UID instead of chance, so the stand-in can GET the pod (launcherPods).
func launcherPodName(vmi *virtv1.VirtualMachineInstance) string {
	const (
		maxPrefix = 63 - 5                        // names.MaxGeneratedNameLength: the name stays a valid DNS label
		alphabet  = "bcdfghjklmnpqrstvwxz2456789" // utilrand.String's: no vowels, no 0, 1 or 3
	)
	prefix := "virt-launcher-" + vmi.Name + "-"
	if len(prefix) > maxPrefix {
		prefix = prefix[:maxPrefix]
	}
	sum := sha256.Sum256([]byte(vmi.UID))
	suffix := make([]byte, 5)
	for i := range suffix {
		suffix[i] = alphabet[int(sum[i])%len(alphabet)]
	}
	return prefix + string(suffix)
}

// launcherPod renders the virt-launcher pod (template.go RenderLaunchManifest, much reduced): named
// launcherPodName(vmi), the VMI's labels plus kubevirt.io=virt-launcher, kubevirt.io/created-by=<vmi uid> and
// vm.kubevirt.io/name=<vmi>, a controller owner reference to the VMI, the compute container and one
// hook-sidecar-N container per entry of the hooks.kubevirt.io/hookSidecars annotation.
func launcherPod(vmi *virtv1.VirtualMachineInstance) *corev1.Pod {
	labels := map[string]string{}
	for k, v := range vmi.Labels {
		labels[k] = v
	}
	labels[virtv1.AppLabel] = "virt-launcher"
	labels[virtv1.CreatedByLabel] = string(vmi.UID)
	labels[virtv1.DeprecatedVirtualMachineNameLabel] = vmi.Name // still set by v1.9 for compatibility
	if len(vmi.Name) <= 63 {
		labels[virtv1.VirtualMachineInstanceIDLabel] = vmi.Name // longer names get a hashed value in KubeVirt
	}
	grace := vmiGracePeriod(vmi) + 15 // KubeVirt gives the pod the VMI's grace plus a margin
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      launcherPodName(vmi),
			Namespace: vmi.Namespace,
			Labels:    labels,
			Annotations: map[string]string{
				virtv1.DomainAnnotation:                   vmi.Name,
				"kubectl.kubernetes.io/default-container": launcherContainerCompute,
			},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(vmi, virtv1.VirtualMachineInstanceGroupVersionKind)},
		},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:                     launcherContainerCompute,
				Image:                    launcherImage,
				Command:                  []string{"/usr/bin/virt-launcher-monitor", "--qemu-timeout", "300s", "--name", vmi.Name, "--uid", string(vmi.UID), "--namespace", vmi.Namespace},
				TerminationMessagePath:   corev1.TerminationMessagePathDefault,
				TerminationMessagePolicy: corev1.TerminationMessageReadFile,
			}},
		},
	}
	if raw, ok := vmi.Annotations[HookSidecarsAnnotation]; ok {
		var sidecars []hookSidecar
		if err := json.Unmarshal([]byte(raw), &sidecars); err != nil || len(sidecars) == 0 {
			sidecars = []hookSidecar{{Image: "invalid-hook-sidecar-annotation"}}
		}
		for i, sc := range sidecars {
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
				Name:                     HookSidecarContainerPrefix + strconv.Itoa(i),
				Image:                    sc.Image,
				Args:                     sc.Args,
				TerminationMessagePath:   corev1.TerminationMessagePathDefault,
				TerminationMessagePolicy: corev1.TerminationMessageReadFile,
			})
		}
	}
	return pod
}

func equalJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}
