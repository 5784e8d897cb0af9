package shutdown

import (
	"strings"
	"testing"
	"time"
)

func TestEventLine(t *testing.T) {
	ts := time.Date(2026, 11, 25, 15, 41, 33, 123456000, time.UTC)
	tests := []struct {
		ev   Event
		want string
	}{
		{Event{Event: EventShutdown, Guest: true, Reason: QEMUGuestReset, Time: ts},
			`{"event":"SHUTDOWN","guest":true,"reason":"guest-reset","time":"2026-11-25T15:41:33.123456Z"}` + "\n"},
		{Event{Event: EventShutdown, Reason: "host-signal"},
			`{"event":"SHUTDOWN","guest":false,"reason":"host-signal"}` + "\n"},
	}
	for _, tt := range tests {
		if got := string(tt.ev.Line()); got != tt.want {
			t.Errorf("Line() = %q, want %q", got, tt.want)
		}
		if res := Parse(string(tt.ev.Line())); len(res.Events) != 1 || res.Events[0] != tt.ev {
			t.Errorf("Parse(Line()) = %+v, want %+v back", res.Events, tt.ev)
		}
	}
}

func TestParse(t *testing.T) {
	line := func(guest bool, reason string) string {
		return string(Event{Event: EventShutdown, Guest: guest, Reason: reason}.Line())
	}
	tests := []struct {
		name       string
		msg        string
		wantCause  Cause
		wantReason string
		wantEvents int
	}{
		{"empty", "", CauseUnknown, "", 0},
		{"garbage", "panic: runtime error\nnot json {", CauseUnknown, "", 0},
		{"guest reset", line(true, QEMUGuestReset), CauseGuestReset, QEMUGuestReset, 1},
		{"guest shutdown", line(true, QEMUGuestShutdown), CauseGuestShutdown, QEMUGuestShutdown, 1},
		{"guest panic", line(true, QEMUGuestPanic), CauseGuestPanic, QEMUGuestPanic, 1},
		{"reset then host-signal (libvirt kills QEMU after the guest event)",
			line(true, QEMUGuestReset) + line(false, "host-signal"), CauseGuestReset, QEMUGuestReset, 2},
		{"host signal only", line(false, "host-signal"), CauseHost, "host-signal", 1},
		{"host qmp quit", line(false, "host-qmp-quit"), CauseHost, "host-qmp-quit", 1},
		{"host event before a guest event: the guest event wins",
			line(false, "host-signal") + line(true, QEMUGuestShutdown), CauseGuestShutdown, QEMUGuestShutdown, 2},
		{"first guest event decides", line(true, QEMUGuestShutdown) + line(true, QEMUGuestReset), CauseGuestShutdown, QEMUGuestShutdown, 2},
		{"unknown guest reason is skipped", line(true, "subsystem-reset") + line(false, "host-signal"), CauseHost, "host-signal", 2},
		{"host reset (virtctl reset: QMP system_reset with on_reboot=destroy)",
			line(false, QEMUHostReset), CauseHostReset, QEMUHostReset, 1},
		{"host reset then host-signal (libvirt kills QEMU after the event)",
			line(false, QEMUHostReset) + line(false, "host-signal"), CauseHostReset, QEMUHostReset, 2},
		{"host-signal before a host reset: the first host event decides",
			line(false, "host-signal") + line(false, QEMUHostReset), CauseHost, "host-signal", 2},
		{"guest reset before a host reset: the guest event wins",
			line(true, QEMUGuestReset) + line(false, QEMUHostReset), CauseGuestReset, QEMUGuestReset, 2},
		{"host reset before a guest event: the guest event wins",
			line(false, QEMUHostReset) + line(true, QEMUGuestShutdown), CauseGuestShutdown, QEMUGuestShutdown, 2},
		{"unknown guest reason before a host reset", line(true, "subsystem-reset") + line(false, QEMUHostReset),
			CauseHostReset, QEMUHostReset, 2},
		{"other host reasons stay Host", line(false, "host-ui"), CauseHost, "host-ui", 1},
		{"a host reason that only starts like the reset one", line(false, QEMUHostReset+"-x"), CauseHost, QEMUHostReset + "-x", 1},
		{"non-host, non-guest reason", line(false, "none"), CauseUnknown, "", 1},
		{"other events and blank lines ignored",
			"\n" + `{"event":"RESUME"}` + "\n  " + line(true, QEMUGuestReset) + "\n", CauseGuestReset, QEMUGuestReset, 1},
		{"event without reason ignored", `{"event":"SHUTDOWN","guest":true}` + "\n", CauseUnknown, "", 0},
		{"no trailing newline", strings.TrimSuffix(line(true, QEMUGuestReset), "\n"), CauseGuestReset, QEMUGuestReset, 1},
		{"truncated last line", line(true, QEMUGuestShutdown) + `{"event":"SHUTDOWN","gue`, CauseGuestShutdown, QEMUGuestShutdown, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Parse(tt.msg)
			if res.Cause != tt.wantCause {
				t.Errorf("Cause = %q, want %q", res.Cause, tt.wantCause)
			}
			if res.Event.Reason != tt.wantReason {
				t.Errorf("Event.Reason = %q, want %q", res.Event.Reason, tt.wantReason)
			}
			if len(res.Events) != tt.wantEvents {
				t.Errorf("%d events, want %d: %+v", len(res.Events), tt.wantEvents, res.Events)
			}
		})
	}
}

func TestParseFullMessage(t *testing.T) {
	var b strings.Builder
	b.Write(Event{Event: EventShutdown, Guest: true, Reason: QEMUGuestReset}.Line())
	for b.Len() < MaxMessageBytes-100 {
		b.Write(Event{Event: EventShutdown, Reason: "host-signal"}.Line())
	}
	if res := Parse(b.String()); res.Cause != CauseGuestReset {
		t.Errorf("Cause = %q for a full message, want GuestReset", res.Cause)
	}
}
