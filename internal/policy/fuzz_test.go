package policy

import (
	"testing"
	"time"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/shutdown"
)

var (
	fuzzPolicies = []v1alpha1.RunPolicy{
		v1alpha1.RunPolicyAlwaysOff, v1alpha1.RunPolicyAlwaysOn, v1alpha1.RunPolicyManual,
		v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, KubeVirtAlways,
	}
	fuzzCauses = []shutdown.Cause{
		shutdown.CauseGuestReset, shutdown.CauseGuestShutdown, shutdown.CauseGuestPanic, shutdown.CauseHost,
		shutdown.CauseUnknown, shutdown.CauseHostReset,
	}
)

// FuzzDecide checks the behaviour table of docs/behaviour.md on arbitrary inputs (seeds in testdata/fuzz/FuzzDecide):
// AlwaysOff and KubeVirt's Always never act (KubeVirt does); AlwaysOn on Manual (under a cap on starts) always
// restarts, at once unless the VMI failed with a crash or unexplained; under Manual and AlwaysOnUntilStoppedManually a
// reboot is never guessed — Restart only for a guest reset or a reset through KubeVirt; a user's stop never restarts;
// a guest poweroff never restarts; Backoff.Delay is monotonic in n and never exceeds Max.
//
// policyIdx/causeIdx beyond the known values pick arbitrary strings (policy) or the raw cause text, so
// unknown enum values are exercised too.
func FuzzDecide(f *testing.F) {
	for pi := range fuzzPolicies {
		for ci := range fuzzCauses {
			for _, failed := range []bool{false, true} {
				for _, user := range []bool{false, true} {
					f.Add(uint8(pi), uint8(ci), failed, user, "", int32(3), int64(10*time.Second), int64(5*time.Minute))
				}
			}
		}
	}
	f.Add(uint8(200), uint8(200), true, false, "Sometimes", int32(40), int64(1), int64(1<<62))
	f.Add(uint8(3), uint8(4), true, false, "", int32(-5), int64(-1), int64(0))
	f.Add(uint8(3), uint8(0), false, false, "", int32(1<<30), int64(time.Hour), int64(time.Second))

	f.Fuzz(func(t *testing.T, policyIdx, causeIdx uint8, failed, user bool, raw string, n int32, base, maxDelay int64) {
		p := v1alpha1.RunPolicy(raw)
		if int(policyIdx) < len(fuzzPolicies) {
			p = fuzzPolicies[policyIdx]
		}
		cause := shutdown.Cause(raw)
		if int(causeIdx) < len(fuzzCauses) {
			cause = fuzzCauses[causeIdx]
		}
		e := Ended{Failed: failed, Cause: cause, StoppedByUser: user}
		d := Decide(p, e)

		if d.Message == "" {
			t.Fatalf("Decide(%q, %+v): empty message", p, e)
		}
		if d.Source != e.Source() {
			t.Fatalf("Decide(%q, %+v): source %s, Ended.Source %s", p, e, d.Source, e.Source())
		}
		known := false
		for _, kp := range fuzzPolicies {
			known = known || kp == p
		}
		restarts := d.Action == ActionRestart || d.Action == ActionRestartAfterBackoff
		crashed := failed && (d.Source == v1alpha1.ShutdownCrash || d.Source == v1alpha1.ShutdownUnknown)
		switch {
		case p == KubeVirtAlways || p == v1alpha1.RunPolicyAlwaysOff || !known:
			if d.Action != ActionNone {
				t.Fatalf("Decide(%q, %+v) = %s: KubeVirt acts for this policy, runpolicy must not", p, e, d.Action)
			}
		case p == v1alpha1.RunPolicyAlwaysOn:
			if want := map[bool]Action{false: ActionRestart, true: ActionRestartAfterBackoff}[crashed]; d.Action != want {
				t.Fatalf("Decide(AlwaysOn, %+v) = %s, want %s: runpolicy keeps an AlwaysOn VM on Manual running", e, d.Action, want)
			}
		case d.Action == ActionRestart && (cause != shutdown.CauseGuestReset && cause != shutdown.CauseHostReset || user):
			t.Fatalf("Decide(%q, %+v) = Restart without a guest reset or a reset through KubeVirt (a reboot is never guessed)", p, e)
		case user && restarts:
			t.Fatalf("Decide(%q, %+v) = %s after a user's stop", p, e, d.Action)
		case cause == shutdown.CauseGuestShutdown && restarts:
			t.Fatalf("Decide(%q, %+v) = %s after a guest poweroff", p, e, d.Action)
		case p == v1alpha1.RunPolicyManual && d.Action == ActionRestartAfterBackoff:
			t.Fatalf("Decide(Manual, %+v) restarts after a crash", e)
		}
		if (p == v1alpha1.RunPolicyManual || p == v1alpha1.RunPolicyAlwaysOnUntilStoppedManually) &&
			cause == shutdown.CauseGuestReset && !user && d.Action != ActionRestart {
			t.Fatalf("Decide(%q, %+v) = %s, want Restart after a guest reset", p, e, d.Action)
		}
		if d.Action == ActionWait {
			t.Fatalf("Decide(%q, %+v) = Wait: Decide gets complete inputs", p, e)
		}

		// Backoff, over every configuration (the flags are not validated): monotonic in n, never negative, bounded
		// by max(Base, Max), zero for the first failure and without a base.
		b := Backoff{Base: time.Duration(base), Max: time.Duration(maxDelay)}
		if b.Base <= 0 {
			if got := b.Delay(n); got != 0 {
				t.Fatalf("%+v: Delay(%d)=%s, want 0 without a base", b, n, got)
			}
			return
		}
		got, next := b.Delay(n), b.Delay(n+1)
		if n < n+1 && next < got {
			t.Fatalf("%+v: Delay(%d)=%s > Delay(%d)=%s", b, n, got, n+1, next)
		}
		if got < 0 {
			t.Fatalf("%+v: Delay(%d)=%s < 0", b, n, got)
		}
		if got > max(b.Max, b.Base) {
			t.Fatalf("%+v: Delay(%d)=%s > max(Base, Max)", b, n, got)
		}
		if n <= 1 && got != 0 {
			t.Fatalf("%+v: Delay(%d)=%s, want 0 for the first failure", b, n, got)
		}
	})
}
