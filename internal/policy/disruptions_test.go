package policy

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

func TestInWindow(t *testing.T) {
	day := func(h, m int) time.Time { return time.Date(2026, 12, 1, h, m, 0, 0, time.UTC) }
	win := func(start string, d time.Duration) v1alpha1.DisruptionWindow {
		return v1alpha1.DisruptionWindow{Start: start, Duration: metav1.Duration{Duration: d}}
	}
	for _, c := range []struct {
		name string
		w    v1alpha1.DisruptionWindow
		now  time.Time
		open bool
		next time.Time
	}{
		{"before today's window", win("02:00", 2*time.Hour), day(1, 59), false, day(2, 0)},
		{"at its start", win("02:00", 2*time.Hour), day(2, 0), true, day(2, 0).AddDate(0, 0, 1)},
		{"inside", win("02:00", 2*time.Hour), day(3, 30), true, day(2, 0).AddDate(0, 0, 1)},
		{"at its end: closed", win("02:00", 2*time.Hour), day(4, 0), false, day(2, 0).AddDate(0, 0, 1)},
		{"past midnight, from yesterday's window", win("23:00", 2*time.Hour), day(0, 30), true, day(23, 0)},
		{"past midnight, after it", win("23:00", 2*time.Hour), day(1, 0), false, day(23, 0)},
		{"a whole day is always open", win("12:00", 24*time.Hour), day(11, 59), true, day(12, 0)},
		{"another time zone counts in UTC", win("02:00", time.Hour), time.Date(2026, 12, 1, 5, 30, 0, 0, time.FixedZone("UTC+3", 3600*3)), true,
			day(2, 0).AddDate(0, 0, 1)},
	} {
		open, next, err := InWindow(c.w, c.now)
		if err != nil || open != c.open || !next.Equal(c.next) {
			t.Errorf("%s: InWindow = %v, %s, %v; want %v, %s", c.name, open, next, err, c.open, c.next)
		}
	}
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	// 2026-12-01 is a Tuesday; Berlin is UTC+1 in December and UTC+2 in July.
	weekdays := v1alpha1.DisruptionWindow{Start: "22:00", Duration: metav1.Duration{Duration: 4 * time.Hour},
		Days: []v1alpha1.Weekday{"Sat", "Sun"}, TimeZone: "Europe/Berlin"}
	for _, c := range []struct {
		name string
		now  time.Time
		open bool
		next time.Time
	}{
		{"a Tuesday: closed until Saturday 22:00 in Berlin", day(12, 0), false, time.Date(2026, 12, 5, 22, 0, 0, 0, berlin)},
		{"Saturday 21:30 UTC is 22:30 in Berlin: open", time.Date(2026, 12, 5, 21, 30, 0, 0, time.UTC), true,
			time.Date(2026, 12, 6, 22, 0, 0, 0, berlin)},
		{"Sunday 01:00 in Berlin: Saturday's window, past midnight", time.Date(2026, 12, 6, 1, 0, 0, 0, berlin), true,
			time.Date(2026, 12, 6, 22, 0, 0, 0, berlin)},
		{"Monday 01:00 in Berlin: Sunday's window, past midnight", time.Date(2026, 12, 7, 1, 0, 0, 0, berlin), true,
			time.Date(2026, 12, 12, 22, 0, 0, 0, berlin)},
		{"Monday 02:00 in Berlin: closed for the week", time.Date(2026, 12, 7, 2, 0, 0, 0, berlin), false,
			time.Date(2026, 12, 12, 22, 0, 0, 0, berlin)},
		{"in summer the same 22:00 is 20:00 UTC", time.Date(2026, 7, 4, 20, 0, 0, 0, time.UTC), true,
			time.Date(2026, 7, 5, 22, 0, 0, 0, berlin)},
	} {
		open, next, err := InWindow(weekdays, c.now)
		if err != nil || open != c.open || !next.Equal(c.next) {
			t.Errorf("%s: InWindow = %v, %s, %v; want %v, %s", c.name, open, next, err, c.open, c.next)
		}
	}
	for _, bad := range []v1alpha1.DisruptionWindow{
		{Start: "02:00", Duration: metav1.Duration{Duration: time.Hour}, TimeZone: "Mars/Olympus_Mons"},
		{Start: "02:00", Duration: metav1.Duration{Duration: time.Hour}, Days: []v1alpha1.Weekday{"Someday"}},
	} {
		if _, _, err := InWindow(bad, day(1, 0)); err == nil {
			t.Errorf("InWindow(%+v) must be an error", bad)
		}
	}
	if _, _, err := InWindow(win("25:00", time.Hour), day(1, 0)); err == nil {
		t.Error("a start that is no time of day must be an error")
	}
}

func TestPlanAutomaticRestart(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	auto := &v1alpha1.Disruptions{RestartApprovalMode: v1alpha1.RestartApprovalAutomatic}
	windowed := &v1alpha1.Disruptions{RestartApprovalMode: v1alpha1.RestartApprovalAutomatic,
		Window: &v1alpha1.DisruptionWindow{Start: "02:00", Duration: metav1.Duration{Duration: time.Hour}}}
	open := &v1alpha1.Disruptions{RestartApprovalMode: v1alpha1.RestartApprovalAutomatic,
		Window: &v1alpha1.DisruptionWindow{Start: "09:30", Duration: metav1.Duration{Duration: time.Hour}}}
	for _, c := range []struct {
		name     string
		d        *v1alpha1.Disruptions
		p        v1alpha1.RunPolicy
		awaiting bool
		want     AutomaticRestart
	}{
		{"no disruptions: Manual", nil, v1alpha1.RunPolicyAlwaysOn, true, AutomaticRestart{}},
		{"Manual mode", &v1alpha1.Disruptions{RestartApprovalMode: v1alpha1.RestartApprovalManual}, v1alpha1.RunPolicyAlwaysOn, true, AutomaticRestart{}},
		{"Automatic, nothing pending", auto, v1alpha1.RunPolicyAlwaysOn, false, AutomaticRestart{}},
		{"Automatic, no window: now", auto, v1alpha1.RunPolicyManual, true, AutomaticRestart{Now: true}},
		{"Automatic, AlwaysOff: never", auto, v1alpha1.RunPolicyAlwaysOff, true, AutomaticRestart{}},
		{"Automatic, window closed: at its next start", windowed, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, true,
			AutomaticRestart{Next: time.Date(2026, 12, 2, 2, 0, 0, 0, time.UTC)}},
		{"Automatic, window open: now", open, v1alpha1.RunPolicyAlwaysOn, true, AutomaticRestart{Now: true}},
	} {
		if got := PlanAutomaticRestart(c.d, c.p, c.awaiting, now); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}
