package schedule

import (
	"strings"
	"testing"
	"time"
)

func mustParse(t *testing.T, expr, tz string) Schedule {
	t.Helper()
	s, err := Parse(expr, tz)
	if err != nil {
		t.Fatalf("Parse(%q, %q): %v", expr, tz, err)
	}
	return s
}

func at(t *testing.T, tz, value string) time.Time {
	t.Helper()
	loc, err := time.LoadLocation(tz)
	if err != nil {
		t.Fatal(err)
	}
	v, err := time.ParseInLocation("2006-01-02 15:04", value, loc)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestParseErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ expr, tz, field string }{
		{"0 8 * * 1-5", "Mars/Phobos", "spec.timeZone"},
		{"0 25 * * *", "UTC", "spec.schedule"},
		{"0 8 * *", "UTC", "spec.schedule"},
		{"5-1 8 * * *", "UTC", "spec.schedule"},
		{"CRON_TZ=Europe/Berlin 0 8 * * *", "UTC", "spec.schedule"},
		{"@every 5m", "UTC", "spec.schedule"},
	} {
		_, err := Parse(tc.expr, tc.tz)
		if err == nil || !strings.HasPrefix(err.Error(), tc.field) {
			t.Errorf("Parse(%q, %q) = %v, want an error naming %s", tc.expr, tc.tz, err, tc.field)
		}
	}
}

func TestNextInTheTimeZone(t *testing.T) {
	s := mustParse(t, "0 8 * * 1-5", "Europe/Berlin")
	// Friday 2026-12-04 09:00 in Berlin: next is Monday 08:00 Berlin, 07:00 UTC (CET, UTC+1).
	got := s.Next(at(t, "Europe/Berlin", "2026-12-04 09:00"))
	if want := at(t, "UTC", "2026-12-07 07:00"); !got.Equal(want) {
		t.Errorf("Next = %v, want %v", got.UTC(), want)
	}
	// In summer (CEST, UTC+2) the same 08:00 is 06:00 UTC.
	got = s.Next(at(t, "Europe/Berlin", "2026-07-01 09:00"))
	if want := at(t, "UTC", "2026-07-02 06:00"); !got.Equal(want) {
		t.Errorf("Next = %v, want %v", got.UTC(), want)
	}
	if got := mustParse(t, "@daily", "").Next(at(t, "UTC", "2026-12-04 09:00")); !got.Equal(at(t, "UTC", "2026-12-05 00:00")) {
		t.Errorf("@daily in UTC: Next = %v", got)
	}
}

func TestDaylightSavingDays(t *testing.T) {
	// Europe/Berlin: 2026-03-29 02:00 CET jumps to 03:00 CEST; 2026-10-25 03:00 CEST falls back to 02:00 CET.
	s := mustParse(t, "30 2 * * *", "Europe/Berlin")
	spring := s.Next(at(t, "UTC", "2026-03-28 12:00"))
	t.Logf("02:30 daily after 2026-03-28 12:00 UTC: %v (UTC %v)", spring, spring.UTC())
	if want := at(t, "Europe/Berlin", "2026-03-30 02:30"); !spring.Equal(want) {
		t.Errorf("spring-forward day: next run %v, want none that day, then %v", spring.UTC(), want.UTC())
	}
	fall := s.Next(at(t, "UTC", "2026-10-24 12:00"))
	again := s.Next(fall)
	t.Logf("02:30 daily on the fall-back day: %v, then %v", fall.UTC(), again.UTC())
	if want := at(t, "UTC", "2026-10-25 00:30"); !fall.Equal(want) { // 02:30 CEST, the first pass
		t.Errorf("fall-back day: runs at %v, want %v", fall.UTC(), want)
	}
	if want := at(t, "Europe/Berlin", "2026-10-26 02:30"); !again.Equal(want) {
		t.Errorf("02:30 ran twice on the fall-back day: %v, then %v; want the next at %v", fall.UTC(), again.UTC(), want.UTC())
	}
	// A time the clocks pass once on that day still runs: 04:00 is after the change.
	if got := mustParse(t, "0 4 * * *", "Europe/Berlin").Next(at(t, "UTC", "2026-10-24 12:00")); !got.Equal(at(t, "Europe/Berlin", "2026-10-25 04:00")) {
		t.Errorf("04:00 on the fall-back day: %v", got)
	}
}

func TestDue(t *testing.T) {
	s := mustParse(t, "0 * * * *", "UTC") // hourly
	deadline := 5 * time.Minute
	for _, tc := range []struct {
		name      string
		last, now string
		want      string // "" for none
		missed    int64
		tooLate   bool
		next      string
	}{
		{"nothing due yet", "2026-12-07 10:00", "2026-12-07 10:59", "", 0, false, "2026-12-07 11:00"},
		{"on time", "2026-12-07 10:00", "2026-12-07 11:00", "2026-12-07 11:00", 0, false, "2026-12-07 12:00"},
		{"late within the deadline", "2026-12-07 10:00", "2026-12-07 11:04", "2026-12-07 11:00", 0, false, "2026-12-07 12:00"},
		{"late beyond the deadline", "2026-12-07 10:00", "2026-12-07 11:06", "2026-12-07 11:00", 0, true, "2026-12-07 12:00"},
		{"three missed, the newest in time", "2026-12-07 07:00", "2026-12-07 11:02", "2026-12-07 11:00", 3, false, "2026-12-07 12:00"},
		{"three missed, the newest too", "2026-12-07 07:00", "2026-12-07 11:30", "2026-12-07 11:00", 3, true, "2026-12-07 12:00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := s.Due(at(t, "UTC", tc.last), at(t, "UTC", tc.now), deadline)
			var want time.Time
			if tc.want != "" {
				want = at(t, "UTC", tc.want)
			}
			if !d.Time.Equal(want) || d.Missed != tc.missed || d.TooLate != tc.tooLate || !d.Next.Equal(at(t, "UTC", tc.next)) {
				t.Errorf("Due = %+v, want time %v, missed %d, too late %v, next %s", d, want, tc.missed, tc.tooLate, tc.next)
			}
		})
	}
	if d := mustParse(t, "0 0 30 2 *", "UTC").Due(at(t, "UTC", "2026-01-01 00:00"), at(t, "UTC", "2026-12-07 00:00"), deadline); !d.Time.IsZero() || !d.Next.IsZero() {
		t.Errorf("30 February: Due = %+v, want nothing due and no next run", d)
	}
}
