package kubevirt

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// virtHandler plays virt-handler's VMI half for the VMIs virt-controller scheduled to this node
// (pkg/virt-handler/vm.go): a Scheduled VMI whose launcher pod runs gets its domain started (phase Running); a VMI
// being deleted whose pods are gone is reported final. The guest's own end (GuestReboot, ...) and a deleted pod
// (kubelet.podDeleted) report the domain's end themselves. Every write carries virt-handler's identity, which
// virt-api's VMI webhooks check.
type virtHandler struct {
	n *Node
}

func (r *virtHandler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	n := r.n
	vmi := &virtv1.VirtualMachineInstance{}
	if err := n.cache.Get(ctx, req.NamespacedName, vmi); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if vmi.Status.NodeName != n.opts.NodeName || vmi.IsFinal() {
		return ctrl.Result{}, nil
	}
	pods, err := launcherPods(ctx, n.cache, vmi)
	if err != nil {
		return ctrl.Result{}, err
	}
	var pod *corev1.Pod
	for i := range pods {
		if pods[i].Spec.NodeName == n.opts.NodeName {
			pod = &pods[i]
		}
	}
	switch {
	case vmi.DeletionTimestamp != nil:
		if pod == nil {
			return ctrl.Result{}, n.finishVMI(ctx, vmi, virtv1.Succeeded)
		}
	case vmi.Status.Phase == virtv1.Scheduled:
		if pod == nil || pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning {
			return ctrl.Result{}, nil
		}
		if n.takeStartFailure(vmi) {
			// virt-launcher could not start the domain: it exits with an error, virt-handler fails the VMI.
			if err := n.terminatePod(ctx, pod, nil, 1); err != nil {
				return ctrl.Result{}, err
			}
			return ctrl.Result{}, n.finishVMI(ctx, vmi, virtv1.Failed)
		}
		return ctrl.Result{}, n.domainStarted(ctx, vmi, pod)
	}
	return ctrl.Result{}, nil
}

// domainStarted writes what virt-handler reports once virt-launcher's domain runs: phase Running, the interfaces
// libvirt and the guest agent see, the machine type, and the SELinux context "none" of a host without SELinux
// (pkg/virt-handler/vm.go, updateSELinuxContext; virt-controller makes no migration target pod without it).
func (n *Node) domainStarted(ctx context.Context, vmi *virtv1.VirtualMachineInstance, pod *corev1.Pod) error {
	return n.patchVMIStatus(ctx, vmi, func(st *virtv1.VirtualMachineInstanceStatus) bool {
		if st.Phase != virtv1.Scheduled {
			return false
		}
		st.Phase = virtv1.Running
		st.Machine = &virtv1.Machine{Type: "q35"}
		st.SelinuxContext = "none"
		st.Interfaces = nil
		for _, iface := range vmi.Spec.Domain.Devices.Interfaces {
			st.Interfaces = append(st.Interfaces, virtv1.VirtualMachineInstanceNetworkInterface{Name: iface.Name,
				IP: pod.Status.PodIP, IPs: []string{pod.Status.PodIP}, InfoSource: "domain"})
		}
		return true
	})
}

// finishVMI reports the domain's end as virt-handler does: Succeeded for a shutdown (reboot with
// on_reboot=destroy, poweroff, ACPI), Failed for a crash or a kill.
func (n *Node) finishVMI(ctx context.Context, vmi *virtv1.VirtualMachineInstance, phase virtv1.VirtualMachineInstancePhase) error {
	return n.patchVMIStatus(ctx, vmi, func(st *virtv1.VirtualMachineInstanceStatus) bool {
		if st.Phase == virtv1.Succeeded || st.Phase == virtv1.Failed {
			return false
		}
		st.Phase = phase
		return true
	})
}

// patchVMIStatus re-reads the VMI, lets change edit its status and writes it as virt-handler does: an Update of the
// whole object (VMIs have no status subresource), retried on conflicts. Not a merge patch: its nulls would delete
// fields (a condition's lastProbeTime: null), and virt-controller's JSON patches "test" the exact status it read.
// A VMI gone, or replaced by another of that name, is left alone.
func (n *Node) patchVMIStatus(ctx context.Context, vmi *virtv1.VirtualMachineInstance, change func(*virtv1.VirtualMachineInstanceStatus) bool) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &virtv1.VirtualMachineInstance{}
		if err := n.client.Get(ctx, types.NamespacedName{Namespace: vmi.Namespace, Name: vmi.Name}, cur); err != nil {
			return client.IgnoreNotFound(err)
		}
		if cur.UID != vmi.UID {
			return nil
		}
		st := cur.Status.DeepCopy()
		if !change(st) {
			return nil
		}
		if st.Phase != cur.Status.Phase {
			// as virt-handler does (pkg/controller SetVMIPhaseTransitionTimestamp)
			st.PhaseTransitionTimestamps = append(st.PhaseTransitionTimestamps, virtv1.VirtualMachineInstancePhaseTransitionTimestamp{
				Phase: st.Phase, PhaseTransitionTimestamp: metav1.Now()})
		}
		cur.Status = *st
		err := n.handler.Update(ctx, cur)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}

// vmiGracePeriod is the VMI's terminationGracePeriodSeconds, KubeVirt's default when unset.
func vmiGracePeriod(vmi *virtv1.VirtualMachineInstance) int64 {
	if vmi.Spec.TerminationGracePeriodSeconds != nil {
		return *vmi.Spec.TerminationGracePeriodSeconds
	}
	return virtv1.DefaultGracePeriodSeconds
}
