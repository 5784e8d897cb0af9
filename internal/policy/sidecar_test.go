package policy

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/shutdown"
)

func kubeVirtCR(ns, name, version string, enabled, disabled []string) kvv1.KubeVirt {
	kv := kvv1.KubeVirt{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	kv.Status.ObservedKubeVirtVersion = version
	if enabled != nil || disabled != nil {
		kv.Spec.Configuration.DeveloperConfiguration = &kvv1.DeveloperConfiguration{FeatureGates: enabled, DisabledFeatureGates: disabled}
	}
	return kv
}

func TestReadKubeVirtConfig(t *testing.T) {
	deleting := kubeVirtCR("a", "old", "v1.9.0", []string{GateSidecar}, nil)
	deleting.DeletionTimestamp = &metav1.Time{}
	cases := []struct {
		name                  string
		crs                   []kvv1.KubeVirt
		found, sidecar, rebPo bool
		from                  string
	}{
		{"no KubeVirt", nil, false, false, false, ""},
		{"stock v1.8: Sidecar off, RebootPolicy Alpha (off)", []kvv1.KubeVirt{kubeVirtCR("kubevirt", "kubevirt", "v1.8.0", nil, nil)}, true, false, false, "kubevirt/kubevirt"},
		{"stock v1.9: RebootPolicy Beta (on)", []kvv1.KubeVirt{kubeVirtCR("kubevirt", "kubevirt", "v1.9.0", nil, nil)}, true, false, true, "kubevirt/kubevirt"},
		{"v1.10 pre-release counts as 1.10", []kvv1.KubeVirt{kubeVirtCR("kubevirt", "kubevirt", "v1.10.0-rc.1", nil, nil)}, true, false, true, "kubevirt/kubevirt"},
		{"gates enabled on v1.8", []kvv1.KubeVirt{kubeVirtCR("kubevirt", "kubevirt", "v1.8.0", []string{"Sidecar", "RebootPolicy"}, nil)}, true, true, true, "kubevirt/kubevirt"},
		{"RebootPolicy disabled on v1.9", []kvv1.KubeVirt{kubeVirtCR("kubevirt", "kubevirt", "v1.9.0", nil, []string{"RebootPolicy"})}, true, false, false, "kubevirt/kubevirt"},
		{"disabled wins over enabled", []kvv1.KubeVirt{kubeVirtCR("kubevirt", "kubevirt", "v1.9.0", []string{"Sidecar"}, []string{"Sidecar"})}, true, false, true, "kubevirt/kubevirt"},
		{"unknown version: RebootPolicy only when enabled", []kvv1.KubeVirt{kubeVirtCR("kubevirt", "kubevirt", "", nil, nil)}, true, false, false, "kubevirt/kubevirt"},
		{"a CR being deleted does not count", []kvv1.KubeVirt{deleting}, false, false, false, ""},
		{"several: first by namespace/name", []kvv1.KubeVirt{kubeVirtCR("z", "kv", "v1.8.0", nil, nil), kubeVirtCR("b", "kv", "v1.8.0", []string{"Sidecar"}, nil)}, true, true, false, "b/kv"},
	}
	for _, c := range cases {
		got := ReadKubeVirtConfig(c.crs)
		if got.Found != c.found || got.Sidecar != c.sidecar || got.RebootPolicy != c.rebPo || got.Name != c.from {
			t.Errorf("%s: got %+v", c.name, got)
		}
	}
}

func TestPlanSidecar(t *testing.T) {
	const img = "example/hook:1"
	on := KubeVirtConfig{Found: true, Name: "kubevirt/kubevirt", Sidecar: true}
	off := KubeVirtConfig{Found: true, Name: "kubevirt/kubevirt"}
	cases := []struct {
		name     string
		mode     SidecarMode
		image    string
		cfg      KubeVirtConfig
		add      bool
		reason   string
		contains string
	}{
		{"auto, gate on", SidecarAuto, img, on, true, ReasonSidecarActive, ""},
		{"auto, gate off: degraded, says how to enable it", SidecarAuto, img, off, false, ReasonFeatureGateDisabled,
			`add "Sidecar" to spec.configuration.developerConfiguration.featureGates of the KubeVirt CR kubevirt/kubevirt`},
		{"auto, no KubeVirt CR", SidecarAuto, img, KubeVirtConfig{}, false, ReasonKubeVirtNotFound, "No KubeVirt custom resource"},
		{"true, gate off: added anyway", SidecarAlways, img, off, true, ReasonSidecarActive, ""},
		{"false, gate on: never added", SidecarNever, img, on, false, ReasonSidecarDisabled, "--hook-sidecar=false"},
		{"no image: never added", SidecarAlways, "", on, false, ReasonSidecarDisabled, "hookSidecar.enabled"},
	}
	for _, c := range cases {
		got := PlanSidecar(c.mode, c.image, c.cfg)
		if got.Add != c.add || got.Degraded == c.add || got.Reason != c.reason || !strings.Contains(got.Message, c.contains) {
			t.Errorf("%s: got %+v", c.name, got)
		}
	}
}

func TestParseSidecarMode(t *testing.T) {
	for in, want := range map[string]SidecarMode{"auto": SidecarAuto, "true": SidecarAlways, "FALSE": SidecarNever} {
		if got, err := ParseSidecarMode(in); err != nil || got != want {
			t.Errorf("ParseSidecarMode(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseSidecarMode("yes"); err == nil || !strings.Contains(err.Error(), "auto, true or false") {
		t.Errorf("ParseSidecarMode(yes): %v", err)
	}
}

func TestSetRebootPolicy(t *testing.T) {
	degraded := Sidecar{Degraded: true, Reason: ReasonFeatureGateDisabled}
	active := Sidecar{Add: true}
	v19 := KubeVirtConfig{Found: true, RebootPolicy: true}
	v18 := KubeVirtConfig{Found: true}
	cases := []struct {
		name string
		p    v1alpha1.RunPolicy
		sc   Sidecar
		cfg  KubeVirtConfig
		user *kvv1.RebootPolicy
		want bool
	}{
		{"AlwaysOn without sidecar where KubeVirt allows it", v1alpha1.RunPolicyAlwaysOn, degraded, v19, nil, true},
		{"not where KubeVirt refuses the field", v1alpha1.RunPolicyAlwaysOn, degraded, v18, nil, false},
		{"never over the user's choice", v1alpha1.RunPolicyAlwaysOn, degraded, v19, ptr.To(kvv1.RebootPolicyReboot), false},
		{"not with the sidecar (it ends the VMI itself)", v1alpha1.RunPolicyAlwaysOn, active, v19, nil, false},
		{"not for Manual: an unexplained end would stop it", v1alpha1.RunPolicyManual, degraded, v19, nil, false},
		{"not for AlwaysOnUntilStoppedManually", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, degraded, v19, nil, false},
	}
	for _, c := range cases {
		if got := SetRebootPolicy(c.p, c.sc, c.cfg, c.user); got != c.want {
			t.Errorf("%s: got %v", c.name, got)
		}
	}
}

func TestRebootCondition(t *testing.T) {
	degraded := PlanSidecar(SidecarAuto, "img", KubeVirtConfig{Found: true, Name: "kubevirt/kubevirt"})
	active := PlanSidecar(SidecarAuto, "img", KubeVirtConfig{Found: true, Sidecar: true})
	terminate, reboot := ptr.To(kvv1.RebootPolicyTerminate), ptr.To(kvv1.RebootPolicyReboot)
	cases := []struct {
		name              string
		p                 v1alpha1.RunPolicy
		sc                Sidecar
		running, withSide bool
		rp                *kvv1.RebootPolicy
		ok, apply         bool
		reason            string
	}{
		{"AlwaysOff: no condition", v1alpha1.RunPolicyAlwaysOff, active, false, false, nil, false, false, ""},
		{"sidecar in the running VMI", v1alpha1.RunPolicyManual, active, true, true, nil, true, true, ReasonSidecarActive},
		{"stopped VM: the next start has it", v1alpha1.RunPolicyManual, active, false, false, nil, true, true, ReasonSidecarActive},
		{"gate turned on while it runs: at its next start", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, active, true, false, nil, false, true, ReasonAwaitingNextStart},
		{"gate off", v1alpha1.RunPolicyManual, degraded, false, false, nil, false, true, ReasonFeatureGateDisabled},
		{"gate turned off while it runs with the sidecar: still works for this VMI", v1alpha1.RunPolicyManual, degraded, true, true, nil, true, true, ReasonSidecarActive},
		{"AlwaysOn, gate off, rebootPolicy Terminate", v1alpha1.RunPolicyAlwaysOn, degraded, true, false, terminate, true, true, ReasonRebootPolicy},
		{"AlwaysOn, user's rebootPolicy Reboot", v1alpha1.RunPolicyAlwaysOn, active, true, true, reboot, false, true, ReasonUserRebootPolicy},
		{"Manual, gate off, Terminate: reboots end the VMI unexplained", v1alpha1.RunPolicyManual, degraded, true, false, terminate, false, true, ReasonFeatureGateDisabled},
	}
	for _, c := range cases {
		ok, apply, reason, msg := RebootCondition(c.p, c.sc, c.running, c.withSide, c.rp)
		if ok != c.ok || apply != c.apply || reason != c.reason || (apply && msg == "") {
			t.Errorf("%s: got ok=%v apply=%v reason=%q msg=%q", c.name, ok, apply, reason, msg)
		}
	}
}

// A restart passes through "no VMI running": with the sidecar in the template, the condition reads the same before,
// during and after, so that the restart costs no status write for it.
func TestRebootConditionSameThroughARestart(t *testing.T) {
	active := PlanSidecar(SidecarAuto, "img", KubeVirtConfig{Found: true, Sidecar: true})
	okRunning, _, reasonRunning, msgRunning := RebootCondition(v1alpha1.RunPolicyManual, active, true, true, nil)
	okStopped, _, reasonStopped, msgStopped := RebootCondition(v1alpha1.RunPolicyManual, active, false, false, nil)
	if okRunning != okStopped || reasonRunning != reasonStopped || msgRunning != msgStopped {
		t.Errorf("running: %v %s %q; no VMI: %v %s %q", okRunning, reasonRunning, msgRunning, okStopped, reasonStopped, msgStopped)
	}
}

// Without any hook sidecar KubeVirt keeps QEMU's on_reboot=restart: a guest reboot never ends the VMI, so a clean
// end with no recorded reason is a guest poweroff, and the policy table applies to it as such.
func TestDecideWithoutSidecar(t *testing.T) {
	poweroff := Ended{Cause: shutdown.CauseUnknown, RebootsStayInGuest: true}
	crash := Ended{Failed: true, Cause: shutdown.CauseUnknown, RebootsStayInGuest: true}
	unexplained := Ended{Cause: shutdown.CauseUnknown} // with a sidecar (or rebootPolicy Terminate) that said nothing
	cases := []struct {
		p      v1alpha1.RunPolicy
		e      Ended
		action Action
		source v1alpha1.ShutdownSource
	}{
		{v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, poweroff, ActionStayStopped, v1alpha1.ShutdownGuestShutdown},
		{v1alpha1.RunPolicyManual, poweroff, ActionStayStopped, v1alpha1.ShutdownGuestShutdown},
		{v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, crash, ActionRestartAfterBackoff, v1alpha1.ShutdownCrash},
		{v1alpha1.RunPolicyManual, crash, ActionStayStopped, v1alpha1.ShutdownCrash},
		{v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, unexplained, ActionRestartAfterBackoff, v1alpha1.ShutdownUnknown},
		{v1alpha1.RunPolicyManual, unexplained, ActionStayStopped, v1alpha1.ShutdownUnknown},
	}
	for _, c := range cases {
		if d := Decide(c.p, c.e); d.Action != c.action || d.Source != c.source {
			t.Errorf("Decide(%s, %+v) = %s/%s, want %s/%s", c.p, c.e, d.Action, d.Source, c.action, c.source)
		}
	}
}

// A reset asked through KubeVirt (virtctl reset, QMP system_reset) is a reboot from outside.
func TestDecideHostReset(t *testing.T) {
	reset := Ended{Cause: shutdown.CauseHostReset}
	for p, want := range map[v1alpha1.RunPolicy]Action{
		v1alpha1.RunPolicyManual:                       ActionRestart,
		v1alpha1.RunPolicyAlwaysOnUntilStoppedManually: ActionRestart,
		v1alpha1.RunPolicyAlwaysOn:                     ActionRestart, // on runStrategy Manual, under a cap on starts
		KubeVirtAlways:                                 ActionNone,
		v1alpha1.RunPolicyAlwaysOff:                    ActionNone,
	} {
		if d := Decide(p, reset); d.Action != want || d.Source != v1alpha1.ShutdownHostReset {
			t.Errorf("Decide(%s, host reset) = %s/%s, want %s/host-reset", p, d.Action, d.Source, want)
		}
	}
	if d := Decide(v1alpha1.RunPolicyManual, Ended{Cause: shutdown.CauseHostReset, StoppedByUser: true}); d.Action != ActionStayStopped {
		t.Errorf("a reset of a VMI stopped through KubeVirt is the user's stop, got %s", d.Action)
	}
}
