package shutdown

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzParse checks the parser's promises on arbitrary termination messages (seeds in testdata/fuzz/FuzzParse):
// it never panics; a guest cause comes only from a guest:true SHUTDOWN line with that reason; HostReset only from
// a host-qmp-system-reset line; a host-signal line appended after the decisive event never changes the cause; no
// valid SHUTDOWN line means CauseUnknown.
func FuzzParse(f *testing.F) {
	line := func(guest bool, reason string) string {
		return string(Event{Event: EventShutdown, Guest: guest, Reason: reason}.Line())
	}
	for _, s := range []string{
		"",
		"garbage\nnot json {",
		line(true, QEMUGuestReset),
		line(true, QEMUGuestReset) + line(false, "host-signal"),
		line(true, QEMUGuestShutdown) + line(false, "host-signal"),
		line(false, "host-signal") + line(true, QEMUGuestShutdown),
		line(true, "subsystem-reset") + line(false, "host-qmp-quit"),
		line(false, QEMUHostReset) + line(false, "host-signal"),
		line(false, "host-signal") + line(false, QEMUHostReset),
		line(false, QEMUHostReset) + line(true, QEMUGuestReset),
		line(true, QEMUHostReset),
		`{"event":"SHUTDOWN","guest":true}`,
		`{"event":"SHUTDOWN","guest":"true","reason":"guest-reset"}`,
		`{"EVENT":"SHUTDOWN","Guest":true,"REASON":"guest-reset"}`,
		`{"event":"SHUTDOWN","guest":true,"reason":"guest-reset","reason":"host-signal"}`,
		line(true, QEMUGuestPanic) + `{"event":"SHUTDOWN","gue`,
		"\r\n  " + line(true, QEMUGuestReset) + "\r\n",
	} {
		f.Add(s)
	}
	hostLine := line(false, "host-signal")
	f.Fuzz(func(t *testing.T, msg string) {
		res := Parse(msg)

		// The cause is consistent with the events it was derived from.
		switch res.Cause {
		case CauseUnknown:
			if res.Event != (Event{}) {
				t.Fatalf("CauseUnknown with an event: %+v", res.Event)
			}
		case CauseGuestReset, CauseGuestShutdown, CauseGuestPanic:
			want := map[Cause]string{CauseGuestReset: QEMUGuestReset, CauseGuestShutdown: QEMUGuestShutdown, CauseGuestPanic: QEMUGuestPanic}[res.Cause]
			if !res.Event.Guest || res.Event.Reason != want || res.Event.Event != EventShutdown {
				t.Fatalf("cause %s from event %+v", res.Cause, res.Event)
			}
		case CauseHostReset:
			// The reason decides, not the guest flag: a (malformed) guest:true host-* line is still not a guest event.
			if res.Event.Reason != QEMUHostReset {
				t.Fatalf("cause HostReset from event %+v", res.Event)
			}
		case CauseHost:
			if !strings.HasPrefix(res.Event.Reason, "host-") || res.Event.Reason == QEMUHostReset {
				t.Fatalf("cause Host from event %+v", res.Event)
			}
		default:
			t.Fatalf("unexpected cause %q", res.Cause)
		}
		if res.Cause != CauseUnknown && !containsEvent(res.Events, res.Event) {
			t.Fatalf("decisive event %+v is not among the parsed events %+v", res.Event, res.Events)
		}
		for _, ev := range res.Events {
			if ev.Event != EventShutdown || ev.Reason == "" {
				t.Fatalf("non-SHUTDOWN event kept: %+v", ev)
			}
		}

		// Independent oracle over the raw lines (messages up to the scanner's limit; the kubelet caps them at
		// MaxMessageBytes anyway): a guest cause needs a guest:true line with that reason, and no valid
		// SHUTDOWN line at all means Unknown.
		if len(msg) <= MaxMessageBytes*4 {
			var valid []Event
			for _, l := range strings.Split(msg, "\n") {
				l = strings.TrimSpace(l)
				if l == "" || l[0] != '{' {
					continue
				}
				var ev Event
				if json.Unmarshal([]byte(l), &ev) == nil && ev.Event == EventShutdown && ev.Reason != "" {
					valid = append(valid, ev)
				}
			}
			if len(valid) != len(res.Events) {
				t.Fatalf("parsed %d events, the lines hold %d valid ones", len(res.Events), len(valid))
			}
			if len(valid) == 0 && res.Cause != CauseUnknown {
				t.Fatalf("no valid SHUTDOWN line but cause %s", res.Cause)
			}
			if res.Cause == CauseGuestReset || res.Cause == CauseGuestShutdown {
				if !containsEvent(valid, res.Event) {
					t.Fatalf("cause %s without such a guest line", res.Cause)
				}
			}
		}

		// No guest event at all: a host cause comes from the first host-* line.
		if res.Cause == CauseHost || res.Cause == CauseHostReset {
			for _, ev := range res.Events {
				if ev.Guest && (ev.Reason == QEMUGuestReset || ev.Reason == QEMUGuestShutdown || ev.Reason == QEMUGuestPanic) {
					t.Fatalf("cause %s although guest event %+v is present", res.Cause, ev)
				}
				if strings.HasPrefix(ev.Reason, "host-") {
					if ev != res.Event {
						t.Fatalf("cause %s from %+v, but the first host event is %+v", res.Cause, res.Event, ev)
					}
					break
				}
			}
		}

		// libvirt's host-signal after the decisive event (the guest's, or a host reset) must not hide it.
		if res.Cause != CauseUnknown {
			sep := "\n"
			if strings.HasSuffix(msg, "\n") {
				sep = ""
			}
			if got := Parse(msg + sep + hostLine); got.Cause != res.Cause || got.Event != res.Event {
				t.Fatalf("appending host-signal changed %s/%+v to %s/%+v", res.Cause, res.Event, got.Cause, got.Event)
			}
		}

		// Re-encoding the decisive event alone gives the same cause back.
		if res.Cause != CauseUnknown {
			if got := Parse(string(res.Event.Line())); got.Cause != res.Cause {
				t.Fatalf("Parse(Line(%+v)) = %s, want %s", res.Event, got.Cause, res.Cause)
			}
		}
	})
}

func containsEvent(evs []Event, ev Event) bool {
	for _, e := range evs {
		if e.Event == ev.Event && e.Guest == ev.Guest && e.Reason == ev.Reason && e.Time.Equal(ev.Time) {
			return true
		}
	}
	return false
}
