package policy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// KubeVirt feature gates runpolicy depends on.
const (
	// GateSidecar lets VMI templates carry hooks.kubevirt.io/hookSidecars. Alpha, off by default (KubeVirt v1.8
	// and v1.9); without it KubeVirt's admission refuses every VM whose template names a hook sidecar.
	GateSidecar = "Sidecar"
	// GateRebootPolicy lets templates set spec.domain.rebootPolicy. Alpha in KubeVirt v1.8, Beta and on by
	// default from v1.9.
	GateRebootPolicy = "RebootPolicy"
)

// KubeVirtConfig is what the cluster's KubeVirt installation allows, read from its KubeVirt custom resource.
type KubeVirtConfig struct {
	// Found is false when no KubeVirt CR exists (KubeVirt is not installed, or runpolicy cannot read it).
	Found bool
	// Name is the KubeVirt CR as namespace/name, for messages.
	Name string
	// Version is KubeVirt's observed version (status.observedKubeVirtVersion), e.g. "v1.8.0"; empty if unknown.
	Version string
	// Sidecar tells whether the Sidecar feature gate is enabled.
	Sidecar bool
	// RebootPolicy tells whether spec.domain.rebootPolicy is accepted.
	RebootPolicy bool
}

// ReadKubeVirtConfig derives the configuration from the cluster's KubeVirt CRs. KubeVirt runs one installation
// per cluster; a CR being deleted does not count, and with several the first by namespace/name wins.
func ReadKubeVirtConfig(kvs []kvv1.KubeVirt) KubeVirtConfig {
	var live []*kvv1.KubeVirt
	for i := range kvs {
		if kvs[i].DeletionTimestamp == nil {
			live = append(live, &kvs[i])
		}
	}
	if len(live) == 0 {
		return KubeVirtConfig{}
	}
	slices.SortFunc(live, func(a, b *kvv1.KubeVirt) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	kv := live[0]
	cfg := KubeVirtConfig{Found: true, Name: kv.Namespace + "/" + kv.Name, Version: kv.Status.ObservedKubeVirtVersion}
	var enabled, disabled []string
	if dc := kv.Spec.Configuration.DeveloperConfiguration; dc != nil {
		enabled, disabled = dc.FeatureGates, dc.DisabledFeatureGates
	}
	gate := func(name string, onByDefault bool) bool {
		switch {
		case slices.Contains(disabled, name):
			return false
		case slices.Contains(enabled, name):
			return true
		}
		return onByDefault
	}
	cfg.Sidecar = gate(GateSidecar, false)
	cfg.RebootPolicy = gate(GateRebootPolicy, versionAtLeast(cfg.Version, 1, 9))
	return cfg
}

// versionAtLeast tells whether a KubeVirt version such as "v1.9.0" or "v1.10.0-rc.1" is at least major.minor;
// an unknown version is not.
func versionAtLeast(v string, major, minor int) bool {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// SidecarMode is how the operator decides whether to add its hook sidecar (--hook-sidecar).
type SidecarMode string

const (
	// SidecarAuto adds the sidecar while KubeVirt's Sidecar feature gate is on (the default).
	SidecarAuto SidecarMode = "auto"
	// SidecarAlways adds it whatever KubeVirt's configuration says; KubeVirt refuses the VMs if the gate is off.
	SidecarAlways SidecarMode = "true"
	// SidecarNever never adds it: reboots stay inside the guest.
	SidecarNever SidecarMode = "false"
)

// ParseSidecarMode reads a --hook-sidecar value.
func ParseSidecarMode(s string) (SidecarMode, error) {
	switch m := SidecarMode(strings.ToLower(s)); m {
	case SidecarAuto, SidecarAlways, SidecarNever:
		return m, nil
	}
	return "", fmt.Errorf("%q is not a hook sidecar mode: use auto, true or false", s)
}

// Reasons of the RebootsApplyChanges condition, and of the degraded-mode metric.
const (
	ReasonSidecarActive       = "HookSidecar"
	ReasonRebootPolicy        = "RebootPolicyTerminate"
	ReasonFeatureGateDisabled = "SidecarFeatureGateDisabled"
	ReasonKubeVirtNotFound    = "KubeVirtNotFound"
	ReasonSidecarDisabled     = "HookSidecarDisabled"
	ReasonUserRebootPolicy    = "UserRebootPolicy"
	ReasonAwaitingNextStart   = "AwaitingNextStart"
)

// Sidecar is the cluster-wide decision about runpolicy's hook sidecar.
type Sidecar struct {
	// Add is true when VMI templates get the sidecar.
	Add bool
	// Degraded is true when runpolicy cannot tell a guest reboot from a poweroff; Reason and Message say why.
	Degraded bool
	Reason   string
	Message  string
}

// PlanSidecar decides whether the hook sidecar (image; empty means none is configured) goes into VMI templates.
func PlanSidecar(mode SidecarMode, image string, cfg KubeVirtConfig) Sidecar {
	const effect = "runpolicy cannot tell a guest reboot from a poweroff: reboots stay inside the guest and do not apply " +
		"pending changes (Manual and AlwaysOnUntilStoppedManually), a poweroff stops the VM"
	switch {
	case image == "" || mode == SidecarNever:
		return Sidecar{Degraded: true, Reason: ReasonSidecarDisabled, Message: "runpolicy's hook sidecar is turned off " +
			"(operator flag --hook-sidecar=false or no --hook-sidecar-image; chart value hookSidecar.enabled): " + effect}
	case mode == SidecarAlways:
		return Sidecar{Add: true, Reason: ReasonSidecarActive}
	case cfg.Sidecar:
		return Sidecar{Add: true, Reason: ReasonSidecarActive}
	case !cfg.Found:
		return Sidecar{Degraded: true, Reason: ReasonKubeVirtNotFound, Message: "No KubeVirt custom resource was found, " +
			"so runpolicy cannot tell whether KubeVirt's Sidecar feature gate is on and does not add its hook sidecar: " + effect}
	default:
		return Sidecar{Degraded: true, Reason: ReasonFeatureGateDisabled, Message: fmt.Sprintf("KubeVirt's %s feature "+
			"gate is off, so runpolicy does not add its hook sidecar: %s. To enable it, add %q to "+
			"spec.configuration.developerConfiguration.featureGates of the KubeVirt CR %s; each VM gets the sidecar at its next start",
			GateSidecar, effect, GateSidecar, cfg.Name)}
	}
}

// SetRebootPolicy tells whether runpolicy sets spec.domain.rebootPolicy: Terminate on a VM's template: only for
// AlwaysOn without the sidecar, where KubeVirt recreates the VMI whatever ended it, so that a guest reboot applies
// pending changes; only where KubeVirt accepts the field, and never over the user's own choice.
func SetRebootPolicy(p v1alpha1.RunPolicy, sc Sidecar, cfg KubeVirtConfig, user *kvv1.RebootPolicy) bool {
	return p == v1alpha1.RunPolicyAlwaysOn && !sc.Add && cfg.RebootPolicy && user == nil
}

// RebootCondition is the VM's RebootsApplyChanges condition: whether a reboot inside the guest restarts the VM
// with its current spec. apply is false when the condition does not apply (AlwaysOff: the VM never runs).
// running tells whether a VMI runs now and runningHasSidecar whether it was started with a hook sidecar;
// rebootPolicy is the template's spec.domain.rebootPolicy as runpolicy applies it.
func RebootCondition(p v1alpha1.RunPolicy, sc Sidecar, running, runningHasSidecar bool, rebootPolicy *kvv1.RebootPolicy) (ok, apply bool, reason, msg string) {
	switch {
	case p == v1alpha1.RunPolicyAlwaysOff:
		return false, false, "", ""
	case rebootPolicy != nil && *rebootPolicy == kvv1.RebootPolicyReboot:
		return false, true, ReasonUserRebootPolicy, "spec.template.spec.domain.rebootPolicy is Reboot: guest reboots stay " +
			"inside the guest and do not apply pending changes"
	case running && runningHasSidecar && !sc.Add:
		return true, true, ReasonSidecarActive, "runpolicy's hook sidecar runs in the launcher pod: a guest reboot restarts " +
			"the VM with the current spec"
	case running && sc.Add && !runningHasSidecar:
		return false, true, ReasonAwaitingNextStart, "runpolicy's hook sidecar is in the VM's template, but the running VMI " +
			"started without it: until the VM's next start, guest reboots stay inside the guest and do not apply pending changes"
	case sc.Add:
		// The same words with and without a running VMI: a restart, which passes through "none running", costs no
		// status write for this condition.
		return true, true, ReasonSidecarActive, "runpolicy's hook sidecar is in the VM's template, and so in the launcher " +
			"pod of every VMI it starts: a guest reboot restarts the VM with the current spec"
	case p == v1alpha1.RunPolicyAlwaysOn && rebootPolicy != nil && *rebootPolicy == kvv1.RebootPolicyTerminate:
		return true, true, ReasonRebootPolicy, "KubeVirt's rebootPolicy Terminate ends the VMI on a guest reboot and " +
			"runPolicy AlwaysOn starts a new one with the current spec"
	default:
		return false, true, sc.Reason, sc.Message
	}
}
