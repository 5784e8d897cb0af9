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

// weekdays are the window's day names, as time.Weekday.
var weekdays = map[v1alpha1.Weekday]time.Weekday{"Sun": time.Sunday, "Mon": time.Monday, "Tue": time.Tuesday,
	"Wed": time.Wednesday, "Thu": time.Thursday, "Fri": time.Friday, "Sat": time.Saturday}

// InWindow tells whether the window w is open at now, and when it opens next after now. The window opens at its
// start on its days (every day without any) in its time zone (UTC without one), and stays open for its duration.
func InWindow(w v1alpha1.DisruptionWindow, now time.Time) (open bool, next time.Time, err error) {
	at, err := time.Parse("15:04", w.Start)
	if err != nil {
		return false, time.Time{}, fmt.Errorf("spec.disruptions.window.start %q: %w", w.Start, err)
	}
	tz := w.TimeZone
	if tz == "" {
		tz = "UTC"
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return false, time.Time{}, fmt.Errorf("spec.disruptions.window.timeZone %q: %w", w.TimeZone, err)
	}
	days := map[time.Weekday]bool{}
	for _, d := range w.Days {
		wd, ok := weekdays[d]
		if !ok {
			return false, time.Time{}, fmt.Errorf("spec.disruptions.window.days: %q is no day of the week", d)
		}
		days[wd] = true
	}
	opens := func(t time.Time) bool { return len(days) == 0 || days[t.Weekday()] }
	local := now.In(loc)
	// The openings of yesterday and today (a window may run past midnight), then of the days after, until one is
	// after now: at most a week ahead.
	for off := -1; off <= 7; off++ {
		start := time.Date(local.Year(), local.Month(), local.Day()+off, at.Hour(), at.Minute(), 0, 0, loc)
		if !opens(start) {
			continue
		}
		if !now.Before(start) && now.Before(start.Add(w.Duration.Duration)) {
			open = true
		}
		if start.After(now) {
			return open, start, nil
		}
	}
	return open, time.Time{}, nil // unreachable with a valid window: some day of the week opens it
}
