package policy

import (
	"fmt"
	"time"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// AutomaticRestart is what spec.disruptions asks about a running VM whose VMI was built from an older spec.
type AutomaticRestart struct {
	// Now: restart it now (create the VirtualMachineOperation).
	Now bool
	// Next is when the window opens next, while a restart waits for it (zero otherwise).
	Next time.Time
}

// PlanAutomaticRestart decides the automatic restart that applies a changed spec (spec.disruptions,
// restartApprovalMode Automatic). awaiting tells whether a running VMI needs a restart to apply the current spec;
// AlwaysOff VMs and stopped VMs never get one (a stopped VM starts with the current spec).
func PlanAutomaticRestart(d *v1alpha1.Disruptions, p v1alpha1.RunPolicy, awaiting bool, now time.Time) AutomaticRestart {
	if d == nil || d.RestartApprovalMode != v1alpha1.RestartApprovalAutomatic || p == v1alpha1.RunPolicyAlwaysOff || !awaiting {
		return AutomaticRestart{}
	}
	if d.Window == nil {
		return AutomaticRestart{Now: true}
	}
	open, next, err := InWindow(*d.Window, now)
	if err != nil { // the CRD's validation refuses such a window; never restart on a window runpolicy cannot read
		return AutomaticRestart{}
	}
	if open {
		return AutomaticRestart{Now: true}
	}
	return AutomaticRestart{Next: next}
}

// InWindow tells whether the daily window w is open at now, and when it opens next after now.
func InWindow(w v1alpha1.DisruptionWindow, now time.Time) (open bool, next time.Time, err error) {
	at, err := time.Parse("15:04", w.Start)
	if err != nil {
		return false, time.Time{}, fmt.Errorf("spec.disruptions.window.start %q: %w", w.Start, err)
	}
	d := w.Duration.Duration
	now = now.UTC()
	today := time.Date(now.Year(), now.Month(), now.Day(), at.Hour(), at.Minute(), 0, 0, time.UTC)
	// Today's window, or yesterday's when it runs past midnight.
	for _, start := range []time.Time{today, today.AddDate(0, 0, -1)} {
		if !now.Before(start) && now.Before(start.Add(d)) {
			open = true
		}
	}
	next = today
	if !now.Before(today) {
		next = today.AddDate(0, 0, 1)
	}
	return open, next, nil
}
