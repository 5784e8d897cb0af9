// Package schedule reads a VirtualMachinePowerSchedule's cron expression in its time zone and says which run is
// due: the newest scheduled time since the last one dealt with, the older ones missed, and whether the newest is
// still within the starting deadline.
package schedule

import (
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // the operator's image has no zoneinfo: the time zone database comes with the binary

	"github.com/robfig/cron/v3"
)

// parser reads the standard five fields (minute hour day-of-month month day-of-week) and the descriptors
// (@daily...), as spec.schedule's admission rule allows.
var parser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Schedule is a cron expression read in a time zone.
type Schedule struct {
	spec cron.Schedule
	loc  *time.Location
}

// Parse reads expr (spec.schedule) in the IANA time zone tz (spec.timeZone; empty is UTC). Its errors name the
// field at fault.
func Parse(expr, tz string) (Schedule, error) {
	if tz == "" {
		tz = "UTC"
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return Schedule{}, fmt.Errorf("spec.timeZone %q is not an IANA time zone: %w", tz, err)
	}
	if strings.HasPrefix(expr, "@every") {
		return Schedule{}, fmt.Errorf("spec.schedule %q: @every is no time of day; use a cron expression (*/5 * * * * for every five minutes)", expr)
	}
	if strings.HasPrefix(expr, "TZ=") || strings.HasPrefix(expr, "CRON_TZ=") {
		return Schedule{}, fmt.Errorf("spec.schedule %q: put the time zone in spec.timeZone", expr)
	}
	spec, err := parser.Parse("CRON_TZ=" + tz + " " + expr)
	if err != nil {
		return Schedule{}, fmt.Errorf("spec.schedule %q: %w", expr, err)
	}
	return Schedule{spec: spec, loc: loc}, nil
}

// Next is the first scheduled time after t (zero if the expression never matches, e.g. 30 February). On a
// daylight-saving day a time of day that does not exist is not run that day, and one that happens twice is run at
// its first occurrence only.
func (s Schedule) Next(t time.Time) time.Time {
	for {
		n := s.spec.Next(t.In(s.loc))
		if n.IsZero() || !s.repeated(n) {
			return n
		}
		t = n
	}
}

// repeated tells whether n's wall clock time already happened shortly before n: the second pass through a time
// of day when the clocks go back (by an hour, or half an hour in some zones).
func (s Schedule) repeated(n time.Time) bool {
	local := n.In(s.loc)
	for _, back := range []time.Duration{30 * time.Minute, time.Hour} {
		e := n.Add(-back).In(s.loc)
		if e.Hour() == local.Hour() && e.Minute() == local.Minute() && e.YearDay() == local.YearDay() {
			return true
		}
	}
	return false
}

// maxScan bounds how many scheduled times Due walks through after a long downtime (a year of a run every five
// minutes); older ones are counted as missed in one step.
const maxScan = 105_120

// Due is what a schedule has to do at a moment.
type Due struct {
	// Time is the newest scheduled time in (last, now]; zero if none is due.
	Time time.Time
	// Missed is how many scheduled times before Time, after last, were not made: only the newest is (a gap of
	// more than maxScan times counts as one).
	Missed int64
	// TooLate: Time is more than the starting deadline ago, so it is skipped too.
	TooLate bool
	// Next is the first scheduled time after now.
	Next time.Time
}

// Due says which run is due at now, given the newest scheduled time already dealt with (last) and the starting
// deadline.
func (s Schedule) Due(last, now time.Time, deadline time.Duration) Due {
	var d Due
	t := last
	for i := 0; ; i++ {
		n := s.Next(t)
		if n.IsZero() || n.After(now) {
			d.Next = n
			break
		}
		if !d.Time.IsZero() {
			d.Missed++
		}
		d.Time, t = n, n
		if i == maxScan { // jump close to now: every time in between was missed anyway
			t = now.Add(-deadline - time.Minute)
			if t.Before(d.Time) {
				t = d.Time
			}
			d.Missed++
		}
	}
	d.TooLate = !d.Time.IsZero() && now.Sub(d.Time) > deadline
	return d
}
