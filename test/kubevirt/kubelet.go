package kubevirt

import (
	"context"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// What the kubelet reports for the node and its pods.
const (
	hostIP = "192.168.0.10"
	podIP  = "10.244.0.10"

	// HookSidecarContainerPrefix names KubeVirt's hook sidecar containers: hook-sidecar-0, hook-sidecar-1, ...
	HookSidecarContainerPrefix = "hook-sidecar-"
	// HookSidecarsAnnotation is KubeVirt's hooks.kubevirt.io/hookSidecars (JSON list of sidecars).
	HookSidecarsAnnotation = "hooks.kubevirt.io/hookSidecars"
	computeContainer       = "compute"
)

// kubelet plays the scheduler and the kubelet for the virt-launcher pods real virt-controller creates: it binds a
// new pod to the node, reports its containers running (the native-sidecar init containers such as
// guest-console-log running too, other init containers completed) and the pod Ready once every readiness gate
// (virt-controller's kubevirt.io/virtual-machine-unpaused) is True; a pod being deleted has its containers ended
// (see terminatePod) and is then removed, as the kubelet does once they are gone.
type kubelet struct {
	n *Node
}

func (r *kubelet) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	n := r.n
	pod := &corev1.Pod{}
	if err := n.cache.Get(ctx, req.NamespacedName, pod); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	n.recordPod(pod)
	switch {
	case pod.DeletionTimestamp != nil:
		return ctrl.Result{}, r.podDeleted(ctx, pod)
	case pod.Spec.NodeName == "":
		binding := &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: n.opts.NodeName},
		}
		err := n.client.SubResource("binding").Create(ctx, pod, binding)
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil // already bound or gone: the next event tells
		}
		return ctrl.Result{}, err
	case pod.Spec.NodeName != n.opts.NodeName:
		return ctrl.Result{}, nil
	case pod.Status.Phase == "" || pod.Status.Phase == corev1.PodPending:
		return ctrl.Result{}, client.IgnoreNotFound(n.client.Status().Update(ctx, runningStatus(pod)))
	case pod.Status.Phase == corev1.PodRunning:
		if updateReady(pod) {
			return ctrl.Result{}, client.IgnoreNotFound(n.client.Status().Update(ctx, pod))
		}
	}
	return ctrl.Result{}, nil
}

// podDeleted ends a pod being deleted, then removes it (grace period 0, as the kubelet does once the containers
// are gone). virt-launcher answers the SIGTERM: when its VMI is being deleted (a stop through KubeVirt) with a
// grace period, the guest got the ACPI power button and shut down (guest-shutdown, then libvirt's host-signal);
// otherwise QEMU is killed (host-signal only). virt-handler then reports the VMI final: Succeeded after an ACPI
// shutdown, else Failed (the domain is gone; virt-controller also fails a Running VMI whose pod vanished).
func (r *kubelet) podDeleted(ctx context.Context, pod *corev1.Pod) error {
	n := r.n
	if !podTerminated(pod) {
		vmi, err := n.podVMI(ctx, pod)
		if err != nil {
			return err
		}
		if vmi != nil {
			n.recordEnd(vmi.UID, vmiGracePeriod(vmi) == 0 || pod.DeletionGracePeriodSeconds != nil && *pod.DeletionGracePeriodSeconds <= 1)
		}
		events, phase := []string{"host-signal"}, virtv1.Failed
		if vmi != nil && vmi.DeletionTimestamp != nil {
			phase = virtv1.Succeeded
			if vmiGracePeriod(vmi) > 0 && vmi.IsRunning() {
				events = []string{"guest-shutdown", "host-signal"}
			} else if vmi.IsRunning() {
				phase = virtv1.Failed // destroyed: KubeVirt reports Failed when ACPI did not end it
			}
		}
		if err := n.terminatePod(ctx, pod, events, 0); err != nil {
			return client.IgnoreNotFound(err)
		}
		if vmi != nil && !vmi.IsFinal() && vmi.Status.NodeName == n.opts.NodeName {
			if err := n.finishVMI(ctx, vmi, phase); err != nil {
				return err
			}
		}
	}
	err := n.client.Delete(ctx, pod, client.GracePeriodSeconds(0), client.Preconditions{UID: &pod.UID})
	return client.IgnoreNotFound(err)
}

// podVMI is the pod's VMI (its controller), read past the cache; nil when it is gone or another one of that name.
func (n *Node) podVMI(ctx context.Context, pod *corev1.Pod) (*virtv1.VirtualMachineInstance, error) {
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != "VirtualMachineInstance" {
		return nil, nil
	}
	vmi, err := n.getVMI(ctx, pod.Namespace, ref.Name)
	if err != nil || vmi == nil || vmi.UID != ref.UID {
		return nil, err
	}
	return vmi, nil
}

// runningStatus is what the kubelet reports once the pod's containers started.
func runningStatus(pod *corev1.Pod) *corev1.Pod {
	pod = pod.DeepCopy()
	now := metav1.Now()
	st := &pod.Status
	st.Phase = corev1.PodRunning
	st.HostIP, st.HostIPs = hostIP, []corev1.HostIP{{IP: hostIP}}
	st.PodIP, st.PodIPs = podIP, []corev1.PodIP{{IP: podIP}}
	st.StartTime = &now
	st.QOSClass = corev1.PodQOSBurstable
	st.InitContainerStatuses = nil
	for _, c := range pod.Spec.InitContainers {
		cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image, ContainerID: containerID(pod, c.Name)}
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			// a native sidecar (KubeVirt's guest-console-log): keeps running beside the containers
			cs.Ready, cs.Started = true, ptrTo(true)
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: now}
		} else {
			cs.Started = ptrTo(false)
			cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now,
				ContainerID: cs.ContainerID}
		}
		st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
	}
	st.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: true, Started: ptrTo(true), ContainerID: containerID(pod, c.Name),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	st.Conditions = nil
	for _, t := range []corev1.PodConditionType{"PodReadyToStartContainers", corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady} {
		st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
	}
	updateReady(pod)
	return pod
}

// updateReady sets the Ready condition as the kubelet computes it: the containers are ready and every readiness
// gate's condition is True. It reports whether it changed anything.
func updateReady(pod *corev1.Pod) bool {
	status, reason, msg := corev1.ConditionTrue, "", ""
	if !conditionTrue(pod, corev1.ContainersReady) {
		status, reason = corev1.ConditionFalse, "ContainersNotReady"
	}
	for _, g := range pod.Spec.ReadinessGates {
		if status == corev1.ConditionTrue && !conditionTrue(pod, g.ConditionType) {
			status, reason, msg = corev1.ConditionFalse, "ReadinessGatesNotReady", "corresponding condition of pod readiness gate \""+string(g.ConditionType)+"\" does not exist."
		}
	}
	for i := range pod.Status.Conditions {
		c := &pod.Status.Conditions[i]
		if c.Type == corev1.PodReady {
			if c.Status == status {
				return false
			}
			c.Status, c.Reason, c.Message, c.LastTransitionTime = status, reason, msg, metav1.Now()
			return true
		}
	}
	pod.Status.Conditions = append(pod.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: status, Reason: reason,
		Message: msg, LastTransitionTime: metav1.Now()})
	return true
}

func conditionTrue(pod *corev1.Pod, t corev1.PodConditionType) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == t {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// terminatePod writes what the kubelet reports when virt-launcher exits: every container terminated — runpolicy's
// hook sidecar (the hook-sidecar-N container running Options.HookSidecarImage) with its termination message (one
// shutdown.Event line per QEMU SHUTDOWN event it saw, in order: guest events guest:true, "host-*" ones guest:false),
// the other hook sidecars with none, compute with computeExit — the native-sidecar init containers stopped after
// them, and the pod Succeeded when every container exited 0, else Failed (KubeVirt's restartPolicy is Never).
func (n *Node) terminatePod(ctx context.Context, pod *corev1.Pod, reasons []string, computeExit int32) error {
	now := time.Now().UTC()
	var msg strings.Builder
	for _, reason := range reasons {
		msg.Write(shutdown.Event{Event: shutdown.EventShutdown, Guest: !strings.HasPrefix(reason, "host-"), Reason: reason, Time: now}.Line())
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &corev1.Pod{}
		if err := n.client.Get(ctx, client.ObjectKeyFromObject(pod), cur); err != nil {
			return err
		}
		if cur.UID != pod.UID || podTerminated(cur) {
			return nil
		}
		started := metav1.NewTime(now)
		if cur.Status.StartTime != nil {
			started = *cur.Status.StartTime
		}
		finished := metav1.NewTime(now)
		term := func(name, image string, exit int32, message string) corev1.ContainerStatus {
			t := &corev1.ContainerStateTerminated{ExitCode: exit, Reason: "Completed", Message: message, StartedAt: started,
				FinishedAt: finished, ContainerID: containerID(cur, name)}
			if exit != 0 {
				t.Reason = "Error"
			}
			return corev1.ContainerStatus{Name: name, Image: image, ImageID: image, Started: ptrTo(false), ContainerID: t.ContainerID,
				State: corev1.ContainerState{Terminated: t}}
		}
		var statuses []corev1.ContainerStatus
		for _, c := range cur.Spec.Containers {
			switch {
			case c.Name == computeContainer:
				statuses = append(statuses, term(c.Name, c.Image, computeExit, ""))
			case strings.HasPrefix(c.Name, HookSidecarContainerPrefix) && (n.opts.HookSidecarImage == "" || c.Image == n.opts.HookSidecarImage):
				statuses = append(statuses, term(c.Name, c.Image, 0, msg.String()))
			default:
				statuses = append(statuses, term(c.Name, c.Image, 0, ""))
			}
		}
		cur.Status.ContainerStatuses = statuses
		for i := range cur.Status.InitContainerStatuses {
			cs := &cur.Status.InitContainerStatuses[i]
			if cs.State.Running != nil {
				*cs = term(cs.Name, cs.Image, 0, "")
			}
		}
		cur.Status.Phase = corev1.PodSucceeded
		if computeExit != 0 {
			cur.Status.Phase = corev1.PodFailed
		}
		for i := range cur.Status.Conditions {
			if t := cur.Status.Conditions[i].Type; t == corev1.PodReady || t == corev1.ContainersReady {
				cur.Status.Conditions[i].Status = corev1.ConditionFalse
				cur.Status.Conditions[i].Reason = "PodCompleted"
				cur.Status.Conditions[i].LastTransitionTime = finished
			}
		}
		return n.client.Status().Update(ctx, cur)
	})
}

func podTerminated(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

func containerID(pod *corev1.Pod, name string) string {
	uid := string(pod.UID)
	if len(uid) > 8 {
		uid = uid[:8]
	}
	return "containerd://" + uid + "-" + name
}

func mustQuantity(s string) resource.Quantity { return resource.MustParse(s) }

func ptrTo[T any](v T) *T { return &v }
