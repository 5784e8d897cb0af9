package controllers

import (
	"cmp"
	"context"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/internal/metrics"
)

// LabelGuard marks the admission policies runpolicy relies on; its value names which (GuardLauncherPods).
const LabelGuard = "runpolicy.io/guard"

// GuardLauncherPods is LabelGuard's value on the ValidatingAdmissionPolicy (and its binding) that lets only
// KubeVirt's virt-controller create pods that a VirtualMachineInstance controls or that carry virt-launcher's labels
// (the chart's launcherPodGuard).
const GuardLauncherPods = "launcher-pods"

// defaultPodGuardInterval is how often the operator looks again whether the launcher-pod guard is installed.
const defaultPodGuardInterval = time.Minute

// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingadmissionpolicies;validatingadmissionpolicybindings,verbs=list

// podGuardCheck reports whether the launcher-pod guard is installed: runpolicy reads a guest's end from the
// termination message of a container in a pod the VMI controls (status.activePods), and only that policy makes sure
// KubeVirt made the pod. Without it a namespace user who may create pods can forge a pod that decides whether a VM
// is restarted. Each change is logged once and runpolicy_launcher_pod_guard says it (0: unguarded).
type podGuardCheck struct {
	reader client.Reader
	// interval between checks; zero means defaultPodGuardInterval.
	interval time.Duration
	last     *bool
}

// Start checks at once and then every interval until ctx ends; it runs on every replica (no leader election
// needed: it only reads).
func (p *podGuardCheck) Start(ctx context.Context) error {
	wait.UntilWithContext(ctx, p.check, cmp.Or(p.interval, defaultPodGuardInterval))
	return nil
}

func (p *podGuardCheck) NeedLeaderElection() bool { return false }

func (p *podGuardCheck) check(ctx context.Context) {
	log := ctrl.LoggerFrom(ctx).WithName("launcher-pod-guard")
	guarded, why, err := launcherPodGuarded(ctx, p.reader)
	if err != nil {
		log.Error(err, "Cannot tell whether the launcher-pod admission policy is installed")
		return
	}
	metrics.LauncherPodGuard(guarded)
	if p.last != nil && *p.last == guarded {
		return
	}
	p.last = &guarded
	if guarded {
		log.Info("Launcher pods are guarded: only KubeVirt's virt-controller may create pods a VMI controls")
		return
	}
	log.Info("Running unguarded: a namespace user who may create pods can forge a launcher pod whose termination "+
		"message decides whether a VM restarts; install the chart with launcherPodGuard.enabled=true", "reason", why)
}

// launcherPodGuarded tells whether a ValidatingAdmissionPolicy labelled as the launcher-pod guard is installed with
// a binding that denies; why says what is missing.
func launcherPodGuarded(ctx context.Context, r client.Reader) (guarded bool, why string, err error) {
	sel := client.MatchingLabels{LabelGuard: GuardLauncherPods}
	var policies admissionv1.ValidatingAdmissionPolicyList
	if err := r.List(ctx, &policies, sel); err != nil {
		return false, "", err
	}
	if len(policies.Items) == 0 {
		return false, "no ValidatingAdmissionPolicy labelled " + LabelGuard + "=" + GuardLauncherPods, nil
	}
	var bindings admissionv1.ValidatingAdmissionPolicyBindingList
	if err := r.List(ctx, &bindings, sel); err != nil {
		return false, "", err
	}
	for _, p := range policies.Items {
		for _, b := range bindings.Items {
			if b.Spec.PolicyName == p.Name && denies(b.Spec.ValidationActions) {
				return true, "", nil
			}
		}
	}
	return false, "the launcher-pod ValidatingAdmissionPolicy has no binding that denies", nil
}

func denies(actions []admissionv1.ValidationAction) bool {
	for _, a := range actions {
		if a == admissionv1.Deny {
			return true
		}
	}
	return false
}
