package policy

import (
	"testing"
	"time"

	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// The rows of the "Policy → KubeVirt runStrategy" table in docs/behaviour.md.
func TestRunStrategy(t *testing.T) {
	cases := []struct {
		policy        v1alpha1.RunPolicy
		bootstrapping bool
		want          kvv1.VirtualMachineRunStrategy
	}{
		{v1alpha1.RunPolicyAlwaysOff, false, kvv1.RunStrategyHalted},
		{v1alpha1.RunPolicyAlwaysOff, true, kvv1.RunStrategyHalted},
		{v1alpha1.RunPolicyAlwaysOn, false, kvv1.RunStrategyAlways},
		{v1alpha1.RunPolicyManual, false, kvv1.RunStrategyManual},
		{v1alpha1.RunPolicyManual, true, kvv1.RunStrategyManual},
		{v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, false, kvv1.RunStrategyManual},
		{v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, true, kvv1.RunStrategyAlways},
	}
	for _, c := range cases {
		if got := RunStrategy(c.policy, c.bootstrapping); got != c.want {
			t.Errorf("RunStrategy(%s, bootstrapping=%v) = %s, want %s", c.policy, c.bootstrapping, got, c.want)
		}
	}
}

func TestBootstrapping(t *testing.T) {
	aousm := v1alpha1.RunPolicyAlwaysOnUntilStoppedManually
	cases := []struct {
		name      string
		policy    v1alpha1.RunPolicy
		entering  bool
		current   kvv1.VirtualMachineRunStrategy
		vmiExists bool
		want      bool
	}{
		{"new VM with AOUSM starts", aousm, true, "", false, true},
		{"changed to AOUSM while stopped starts", aousm, true, kvv1.RunStrategyManual, false, true},
		{"changed to AOUSM while running: already on", aousm, true, kvv1.RunStrategyManual, true, false},
		{"still waiting for the first VMI keeps Always", aousm, false, kvv1.RunStrategyAlways, false, true},
		{"first VMI exists: Manual from now on", aousm, false, kvv1.RunStrategyAlways, true, false},
		{"stopped by the user later: stays Manual", aousm, false, kvv1.RunStrategyManual, false, false},
		{"Manual never bootstraps", v1alpha1.RunPolicyManual, true, "", false, false},
		{"AlwaysOn never bootstraps (Always anyway)", v1alpha1.RunPolicyAlwaysOn, true, "", false, false},
	}
	for _, c := range cases {
		if got := Bootstrapping(c.policy, c.entering, c.current, c.vmiExists); got != c.want {
			t.Errorf("%s: Bootstrapping = %v, want %v", c.name, got, c.want)
		}
	}
}

// Every row × column of the behaviour table: guest reset, guest poweroff, crash (failed VMI, panic, killed
// from outside), a vanished launcher pod (failed VMI without a message), and a user's stop.
func TestDecide(t *testing.T) {
	reset := Ended{Cause: shutdown.CauseGuestReset}
	poweroff := Ended{Cause: shutdown.CauseGuestShutdown}
	crashed := Ended{Failed: true, Cause: shutdown.CauseUnknown}
	panicked := Ended{Cause: shutdown.CauseGuestPanic}
	killed := Ended{Cause: shutdown.CauseHost}
	podGone := Ended{Failed: true}
	noMessage := Ended{}
	userStop := Ended{StoppedByUser: true, Cause: shutdown.CauseGuestShutdown}
	userStopDuringReset := Ended{StoppedByUser: true, Cause: shutdown.CauseGuestReset}
	resetButFailed := Ended{Failed: true, Cause: shutdown.CauseGuestReset}

	type row struct {
		name   string
		policy v1alpha1.RunPolicy
		ended  Ended
		action Action
		source v1alpha1.ShutdownSource
	}
	rows := make([]row, 0, 32) // the rows below
	for _, p := range []v1alpha1.RunPolicy{v1alpha1.RunPolicyAlwaysOff, KubeVirtAlways} {
		for name, e := range map[string]Ended{"reset": reset, "poweroff": poweroff, "crash": crashed, "pod gone": podGone} {
			rows = append(rows, row{string(p) + "/" + name, p, e, ActionNone, e.Source()})
		}
	}
	m, a, on := v1alpha1.RunPolicyManual, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, v1alpha1.RunPolicyAlwaysOn
	rows = append(rows,
		// AlwaysOn on runStrategy Manual (a cap on starts): runpolicy starts it again whatever ended it.
		row{"AlwaysOn/reset", on, reset, ActionRestart, v1alpha1.ShutdownGuestReset},
		row{"AlwaysOn/poweroff", on, poweroff, ActionRestart, v1alpha1.ShutdownGuestShutdown},
		row{"AlwaysOn/user stop", on, userStop, ActionRestart, v1alpha1.ShutdownUser},
		row{"AlwaysOn/crash", on, crashed, ActionRestartAfterBackoff, v1alpha1.ShutdownCrash},
		row{"AlwaysOn/pod gone", on, podGone, ActionRestartAfterBackoff, v1alpha1.ShutdownCrash},
		row{"AlwaysOn/no message, a clean end", on, noMessage, ActionRestart, v1alpha1.ShutdownUnknown},
		row{"AlwaysOn/panic, a clean end", on, panicked, ActionRestart, v1alpha1.ShutdownCrash},
	)
	rows = append(rows,
		row{"Manual/reset", m, reset, ActionRestart, v1alpha1.ShutdownGuestReset},
		row{"Manual/reset reported by a failed VMI", m, resetButFailed, ActionRestart, v1alpha1.ShutdownGuestReset},
		row{"Manual/poweroff", m, poweroff, ActionStayStopped, v1alpha1.ShutdownGuestShutdown},
		row{"Manual/crash", m, crashed, ActionStayStopped, v1alpha1.ShutdownCrash},
		row{"Manual/panic", m, panicked, ActionStayStopped, v1alpha1.ShutdownCrash},
		row{"Manual/killed from outside", m, killed, ActionStayStopped, v1alpha1.ShutdownCrash},
		row{"Manual/pod gone", m, podGone, ActionStayStopped, v1alpha1.ShutdownCrash},
		row{"Manual/no message", m, noMessage, ActionStayStopped, v1alpha1.ShutdownUnknown},
		row{"Manual/user stop", m, userStop, ActionStayStopped, v1alpha1.ShutdownUser},
		row{"AOUSM/reset", a, reset, ActionRestart, v1alpha1.ShutdownGuestReset},
		row{"AOUSM/poweroff", a, poweroff, ActionStayStopped, v1alpha1.ShutdownGuestShutdown},
		row{"AOUSM/user stop", a, userStop, ActionStayStopped, v1alpha1.ShutdownUser},
		row{"AOUSM/user stop while the guest reset", a, userStopDuringReset, ActionStayStopped, v1alpha1.ShutdownUser},
		row{"AOUSM/crash", a, crashed, ActionRestartAfterBackoff, v1alpha1.ShutdownCrash},
		row{"AOUSM/panic", a, panicked, ActionRestartAfterBackoff, v1alpha1.ShutdownCrash},
		row{"AOUSM/killed from outside", a, killed, ActionRestartAfterBackoff, v1alpha1.ShutdownCrash},
		row{"AOUSM/pod gone", a, podGone, ActionRestartAfterBackoff, v1alpha1.ShutdownCrash},
		row{"AOUSM/no message is never a reboot", a, noMessage, ActionRestartAfterBackoff, v1alpha1.ShutdownUnknown},
	)
	for _, r := range rows {
		d := Decide(r.policy, r.ended)
		if d.Action != r.action || d.Source != r.source {
			t.Errorf("%s: Decide = %s/%s, want %s/%s", r.name, d.Action, d.Source, r.action, r.source)
		}
		if d.Message == "" {
			t.Errorf("%s: empty message", r.name)
		}
	}
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Base: 10 * time.Second, Max: 60 * time.Second}
	want := map[int32]time.Duration{0: 0, 1: 0, 2: 10 * time.Second, 3: 20 * time.Second, 4: 40 * time.Second, 5: 60 * time.Second, 50: 60 * time.Second}
	for n, w := range want {
		if got := b.Delay(n); got != w {
			t.Errorf("Delay(%d) = %s, want %s", n, got, w)
		}
	}
	// Misconfigured: Max below Base, or a Base so large that doubling would overflow.
	if got := (Backoff{Base: 10 * time.Second, Max: -1}).Delay(5); got != 10*time.Second {
		t.Errorf("Max below Base: Delay(5) = %s, want the base", got)
	}
	huge := Backoff{Base: 1 << 62, Max: 1 << 62}
	for n := int32(2); n < 70; n++ {
		if got := huge.Delay(n); got != 1<<62 {
			t.Fatalf("huge base: Delay(%d) = %d", n, got)
		}
	}
}
