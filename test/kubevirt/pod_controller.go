package kubevirt

import (
	"context"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// podIP is what the fake kubelet reports for every launcher pod.
const podIP = "10.244.0.10"

// kubelet plays the scheduler and kubelet for virt-launcher pods, which envtest has neither of: it binds a new pod
// to Options.NodeName, reports it Running and Ready, and finishes a pod being deleted (containers terminated, then
// removed with grace period 0, as the kubelet does once the containers are gone).
type kubelet struct {
	s *StandIn
}

func (r *kubelet) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	c := r.s.client
	pod := &corev1.Pod{}
	if err := c.Get(ctx, req.NamespacedName, pod); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	switch {
	case pod.DeletionTimestamp != nil:
		if !podTerminated(pod) {
			// SIGTERM: virt-launcher ends QEMU from outside; the sidecar sees only host-signal.
			if err := r.s.terminatePod(ctx, pod, []string{"host-signal"}, 0); err != nil {
				return ctrl.Result{}, err
			}
		}
		err := c.Delete(ctx, pod, client.GracePeriodSeconds(0), client.Preconditions{UID: &pod.UID})
		return ctrl.Result{}, client.IgnoreNotFound(err)
	case pod.Spec.NodeName == "":
		binding := &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: r.s.opts.NodeName},
		}
		err := c.SubResource("binding").Create(ctx, pod, binding)
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return ctrl.Result{Requeue: true}, nil
		}
		return ctrl.Result{}, err
	case pod.Status.Phase == "" || pod.Status.Phase == corev1.PodPending:
		now := metav1.Now()
		pod.Status.Phase = corev1.PodRunning
		pod.Status.HostIP = "192.168.0.10"
		pod.Status.HostIPs = []corev1.HostIP{{IP: pod.Status.HostIP}}
		pod.Status.PodIP = podIP
		pod.Status.PodIPs = []corev1.PodIP{{IP: podIP}}
		pod.Status.StartTime = &now
		pod.Status.Conditions = nil
		for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
			pod.Status.Conditions = append(pod.Status.Conditions, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
		}
		pod.Status.ContainerStatuses = nil
		for _, ctr := range pod.Spec.Containers {
			pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, corev1.ContainerStatus{
				Name: ctr.Name, Image: ctr.Image, ImageID: ctr.Image, Ready: true, Started: ptrTo(true),
				ContainerID: "containerd://" + string(pod.UID)[:8] + "-" + ctr.Name,
				State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			})
		}
		return ctrl.Result{}, client.IgnoreNotFound(c.Status().Update(ctx, pod))
	}
	return ctrl.Result{}, nil
}

// terminatePod writes what the kubelet reports when virt-launcher exits: every container terminated, the hook
// sidecar with its termination message (one shutdown.Event line per QEMU SHUTDOWN event it saw, in order: guest
// events are guest:true, "host-*" ones guest:false), the compute container with computeExit, and the pod phase
// Succeeded when everything exited 0, else Failed (restartPolicy Never).
func (s *StandIn) terminatePod(ctx context.Context, pod *corev1.Pod, reasons []string, computeExit int32) error {
	now := time.Now().UTC()
	var msg strings.Builder
	for _, reason := range reasons {
		msg.Write(shutdown.Event{Event: shutdown.EventShutdown, Guest: !strings.HasPrefix(reason, "host-"), Reason: reason, Time: now}.Line())
	}
	started := metav1.NewTime(now)
	if pod.Status.StartTime != nil {
		started = *pod.Status.StartTime
	}
	finished := metav1.NewTime(now)
	statuses := make([]corev1.ContainerStatus, 0, len(pod.Spec.Containers))
	for _, ctr := range pod.Spec.Containers {
		term := &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: started, FinishedAt: finished}
		switch {
		case ctr.Name == launcherContainerCompute:
			term.ExitCode = computeExit
			if computeExit != 0 {
				term.Reason = "Error"
			}
		case strings.HasPrefix(ctr.Name, HookSidecarContainerPrefix):
			term.Message = msg.String()
		}
		st := corev1.ContainerStatus{Name: ctr.Name, Image: ctr.Image, ImageID: ctr.Image, Started: ptrTo(false),
			State: corev1.ContainerState{Terminated: term}}
		if uid := string(pod.UID); len(uid) >= 8 {
			st.ContainerID = "containerd://" + uid[:8] + "-" + ctr.Name
			term.ContainerID = st.ContainerID
		}
		statuses = append(statuses, st)
	}
	pod.Status.ContainerStatuses = statuses
	pod.Status.Phase = corev1.PodSucceeded
	if computeExit != 0 {
		pod.Status.Phase = corev1.PodFailed
	}
	for i := range pod.Status.Conditions {
		if t := pod.Status.Conditions[i].Type; t == corev1.PodReady || t == corev1.ContainersReady {
			pod.Status.Conditions[i].Status = corev1.ConditionFalse
			pod.Status.Conditions[i].Reason = "PodCompleted"
			pod.Status.Conditions[i].LastTransitionTime = finished
		}
	}
	return s.client.Status().Update(ctx, pod)
}

func ptrTo[T any](v T) *T { return &v }

var _ types.UID
