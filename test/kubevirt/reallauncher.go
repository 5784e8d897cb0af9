package kubevirt

import (
	"context"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	virtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/test/launcher"
)

// The real launcher (Options.RealLauncher): a launcher pod whose VMI boots a kernel from a container image (the
// only VMIs the real virt-launcher can boot here: the tiny test guest, test/guest) runs KubeVirt's real
// virt-launcher, libvirt and QEMU with runpolicy's real hook sidecar (test/launcher). The kubelet then reports the
// containers' real states and termination messages, and virt-handler the VMI's phase from virt-launcher's domain
// events; the guest itself decides when it ends (its kernel command line: action=reboot|poweroff|hang). Every
// other pod stays simulated.

// realLauncherPod tells whether pod runs the real launcher.
func (n *Node) realLauncherPod(ctx context.Context, pod *corev1.Pod) (*virtv1.VirtualMachineInstance, bool, error) {
	if n.opts.RealLauncher == nil {
		return nil, false, nil
	}
	if n.opts.RealLauncher.Pod(pod.UID) != nil {
		return nil, true, nil
	}
	vmi, err := n.podVMI(ctx, pod)
	if err != nil || vmi == nil {
		return nil, false, err
	}
	fw := vmi.Spec.Domain.Firmware
	return vmi, fw != nil && fw.KernelBoot != nil && fw.KernelBoot.Container != nil, nil
}

// startRealLauncher is the kubelet starting a bound pod's containers, for a real-launcher pod (once).
func (n *Node) startRealLauncher(ctx context.Context, pod *corev1.Pod) error {
	vmi, real, err := n.realLauncherPod(ctx, pod)
	if err != nil || !real || vmi == nil {
		return err // not a real-launcher pod, or already running
	}
	log := logr.Discard()
	if n.opts.Logger != nil {
		log = *n.opts.Logger
	}
	log = log.WithValues("pod", client.ObjectKeyFromObject(pod), "vmi", vmi.Name)
	run := context.WithoutCancel(ctx)
	return n.opts.RealLauncher.Run(run, pod, vmi, launcher.Callbacks{
		Phase: func(phase virtv1.VirtualMachineInstancePhase, d *launcher.Domain) {
			log.Info("Real launcher: VMI phase", "phase", phase, "domain", d.Status+"/"+d.Reason)
			var err error
			if phase == virtv1.Running {
				err = n.domainStarted(run, vmi, pod)
			} else {
				err = n.finishVMI(run, vmi, phase)
			}
			if err != nil {
				log.Error(err, "Real launcher: VMI status")
			}
		},
		Exited: func(statuses []corev1.ContainerStatus) {
			log.Info("Real launcher: containers exited")
			if err := n.realPodExited(run, pod, statuses); err != nil {
				log.Error(err, "Real launcher: pod status")
			}
			// virt-handler fails a VMI whose launcher is gone before its domain ended.
			if cur, err := n.podVMI(run, pod); err == nil && cur != nil && !cur.IsFinal() && cur.Status.NodeName == n.opts.NodeName {
				if err := n.finishVMI(run, cur, virtv1.Failed); err != nil {
					log.Error(err, "Real launcher: VMI status")
				}
			}
		},
		Error: func(err error) { log.Error(err, "Real launcher: following the VMI") },
	})
}

// syncRealLauncher is virt-handler's SyncVirtualMachine for a Scheduled VMI whose real-launcher pod runs; it
// reports whether pod is one.
func (n *Node) syncRealLauncher(ctx context.Context, vmi *virtv1.VirtualMachineInstance, pod *corev1.Pod) (bool, error) {
	_, real, err := n.realLauncherPod(ctx, pod)
	if err != nil || !real {
		return false, err
	}
	return true, n.opts.RealLauncher.Sync(pod.UID, vmi)
}

// deleteRealLauncher is the kubelet's pod deletion for a real-launcher pod whose containers still run: SIGTERM,
// SIGKILL after the pod's grace period, in the background; the containers' end is then reported (realPodExited) and
// the pod removed by the next reconcile. It reports whether pod is one.
func (n *Node) deleteRealLauncher(pod *corev1.Pod) bool {
	if podTerminated(pod) || n.opts.RealLauncher == nil || n.opts.RealLauncher.Pod(pod.UID) == nil {
		return false
	}
	grace := 30 * time.Second
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	go n.opts.RealLauncher.Delete(pod.UID, grace)
	return true
}

// realPodExited writes what the kubelet reports once a real-launcher pod's containers exited: their real states
// (termination messages included), the containers not run (guest-console-log, the kernel boot container) and the
// running native-sidecar init containers terminated, the pod Succeeded when every container exited 0, else Failed.
func (n *Node) realPodExited(ctx context.Context, pod *corev1.Pod, real []corev1.ContainerStatus) error {
	byName := map[string]corev1.ContainerStatus{}
	for _, st := range real {
		byName[st.Name] = st
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &corev1.Pod{}
		if err := n.client.Get(ctx, client.ObjectKeyFromObject(pod), cur); err != nil {
			return client.IgnoreNotFound(err)
		}
		if cur.UID != pod.UID || podTerminated(cur) {
			return nil
		}
		now := metav1.Now()
		phase := corev1.PodSucceeded
		var statuses []corev1.ContainerStatus
		for _, c := range cur.Spec.Containers {
			st, ok := byName[c.Name]
			if !ok {
				st = corev1.ContainerStatus{Name: c.Name, Image: c.Image, State: corev1.ContainerState{
					Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now}}}
			}
			st.ImageID, st.ContainerID, st.Started, st.Ready = c.Image, containerID(cur, c.Name), ptrTo(false), false
			if t := st.State.Terminated; t != nil {
				t.ContainerID = st.ContainerID
				if t.ExitCode != 0 {
					phase = corev1.PodFailed
				}
			}
			statuses = append(statuses, st)
		}
		cur.Status.ContainerStatuses = statuses
		for i := range cur.Status.InitContainerStatuses {
			cs := &cur.Status.InitContainerStatuses[i]
			if cs.State.Running != nil {
				cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed",
					StartedAt: cs.State.Running.StartedAt, FinishedAt: now, ContainerID: cs.ContainerID}}
				cs.Ready, cs.Started = false, ptrTo(false)
			}
		}
		cur.Status.Phase = phase
		for i := range cur.Status.Conditions {
			if t := cur.Status.Conditions[i].Type; t == corev1.PodReady || t == corev1.ContainersReady {
				cur.Status.Conditions[i].Status = corev1.ConditionFalse
				cur.Status.Conditions[i].Reason = "PodCompleted"
				cur.Status.Conditions[i].LastTransitionTime = now
			}
		}
		err := n.client.Status().Update(ctx, cur)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}
