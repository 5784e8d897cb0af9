package vm

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/metrics"
	"github.com/runpolicy/runpolicy/internal/policy"
)

// sidecarPlan reads KubeVirt's configuration (its KubeVirt CR, from the cache) and decides whether VMI templates
// get runpolicy's hook sidecar. A change of that decision is logged once and shown by a metric.
func (r *Reconciler) sidecarPlan(ctx context.Context) (policy.KubeVirtConfig, policy.Sidecar, error) {
	list := &kvv1.KubeVirtList{}
	if err := r.List(ctx, list); err != nil {
		return policy.KubeVirtConfig{}, policy.Sidecar{}, err
	}
	cfg := policy.ReadKubeVirtConfig(list.Items)
	sc := policy.PlanSidecar(r.sidecarMode(), r.HookSidecarImage, cfg)
	r.noteSidecar(ctx, cfg, sc)
	return cfg, sc, nil
}

func (r *Reconciler) sidecarMode() policy.SidecarMode {
	if r.SidecarMode == "" {
		return policy.SidecarAuto
	}
	return r.SidecarMode
}

// noteSidecar logs the hook-sidecar decision and sets the degraded-mode metric when the decision changed.
func (r *Reconciler) noteSidecar(ctx context.Context, cfg policy.KubeVirtConfig, sc policy.Sidecar) {
	r.mode.Lock()
	defer r.mode.Unlock()
	if r.mode.last != nil && *r.mode.last == sc {
		return
	}
	r.mode.last = &sc
	metrics.SidecarDegraded(sc.Degraded)
	log := ctrl.LoggerFrom(ctx).WithName("sidecar")
	if sc.Degraded {
		log.Info("Degraded mode: guest reboots do not apply pending changes", "reason", sc.Reason, "detail", sc.Message,
			"kubevirt", cfg.Name, "kubevirtVersion", cfg.Version)
		return
	}
	log.Info("Hook sidecar mode: guest reboots restart VMs with their current spec", "mode", r.sidecarMode(),
		"kubevirt", cfg.Name, "kubevirtVersion", cfg.Version, "sidecarFeatureGate", cfg.Sidecar)
}

// kubeVirtConfigChanged maps a change of KubeVirt's configuration to every runpolicy VM: each may need the
// sidecar added or removed (at its next start) and its RebootsApplyChanges condition updated.
func (r *Reconciler) kubeVirtConfigChanged(ctx context.Context, _ client.Object) []ctrl.Request {
	cfg, sc, err := r.sidecarPlan(ctx)
	if err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Reading KubeVirt's configuration failed")
		return nil
	}
	// The KubeVirt CR changes for many reasons (its status, other settings); every VM is looked at again only when
	// what runpolicy derives from it changed. This tracker is the watch's own: a reconcile may already have seen the
	// new configuration, which must not keep the other VMs from being looked at.
	r.watched.Lock()
	same := r.watched.seen && r.watched.cfg == cfg && r.watched.sc == sc
	r.watched.cfg, r.watched.sc, r.watched.seen = cfg, sc, true
	r.watched.Unlock()
	if same {
		return nil
	}
	vms := &v1alpha1.VirtualMachineList{}
	if err := r.List(ctx, vms); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing VirtualMachines after a KubeVirt configuration change failed")
		return nil
	}
	reqs := make([]ctrl.Request, 0, len(vms.Items))
	for i := range vms.Items {
		reqs = append(reqs, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(&vms.Items[i])})
	}
	return reqs
}

// userRebootPolicy is the rebootPolicy the user set in the VM's template, if any.
func userRebootPolicy(vm *v1alpha1.VirtualMachine) *kvv1.RebootPolicy {
	if vm.Spec.Template == nil {
		return nil
	}
	return vm.Spec.Template.Spec.Domain.RebootPolicy
}

// setRebootCondition sets RebootsApplyChanges: whether a guest reboot restarts the VM with its current spec.
func (r *Reconciler) setRebootCondition(vm *v1alpha1.VirtualMachine, vmi *kvv1.VirtualMachineInstance,
	kvcfg policy.KubeVirtConfig, sc policy.Sidecar) {
	rp := userRebootPolicy(vm)
	if policy.SetRebootPolicy(vm.Spec.RunPolicy, sc, kvcfg, rp) {
		rp = ptr.To(kvv1.RebootPolicyTerminate)
	}
	running := policy.VMIActive(vmi)
	withSidecar := running && hasHookSidecar(vmi.Annotations[AnnotationHookSidecars], r.HookSidecarImage)
	ok, apply, reason, msg := policy.RebootCondition(vm.Spec.RunPolicy, sc, running, withSidecar, rp)
	if !apply {
		removeCondition(vm, v1alpha1.ConditionRebootsApplyChanges)
		return
	}
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	setCondition(vm, v1alpha1.ConditionRebootsApplyChanges, status, reason, msg)
}
