package hooksidecar

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/runpolicy/runpolicy/internal/shutdown"
)

func TestTerminationLogKeepsFirstEventsWithinLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "termination-log")
	tl, err := OpenTerminationLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tl.Close() }()
	now := time.Date(2026, 11, 25, 15, 41, 33, 123456000, time.UTC)
	first := shutdown.Event{Event: shutdown.EventShutdown, Guest: true, Reason: shutdown.QEMUGuestReset, Time: now}
	if ok, err := tl.Append(first); !ok || err != nil {
		t.Fatalf("first Append = %v, %v", ok, err)
	}
	// Each line is on disk as soon as Append returns.
	if b, _ := os.ReadFile(path); string(b) != string(first.Line()) {
		t.Fatalf("after one Append the file holds %q", b)
	}
	dropped := 0
	for i := range 200 {
		ev := shutdown.Event{Event: shutdown.EventShutdown, Reason: "host-signal", Time: now.Add(time.Duration(i) * time.Second)}
		ok, err := tl.Append(ev)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			dropped++
		}
	}
	if dropped == 0 {
		t.Fatal("200 events fitted in the limit; the test does not exercise it")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > shutdown.MaxMessageBytes {
		t.Errorf("termination log is %d bytes, limit %d", len(b), shutdown.MaxMessageBytes)
	}
	res := shutdown.Parse(string(b))
	if res.Cause != shutdown.CauseGuestReset || !res.Event.Time.Equal(now) {
		t.Errorf("Parse = %v %+v, want GuestReset from the first event", res.Cause, res.Event)
	}
	if want := 201 - dropped; len(res.Events) != want {
		t.Errorf("%d events parsed, want every written one (%d): a line was truncated", len(res.Events), want)
	}
}

func TestTerminationLogAppendsToExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "termination-log")
	prev := shutdown.Event{Event: shutdown.EventShutdown, Guest: true, Reason: shutdown.QEMUGuestShutdown}.Line()
	if err := os.WriteFile(path, prev, 0o644); err != nil {
		t.Fatal(err)
	}
	tl, err := OpenTerminationLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tl.Close() }()
	if _, err := tl.Append(shutdown.Event{Event: shutdown.EventShutdown, Reason: "host-signal"}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if res := shutdown.Parse(string(b)); len(res.Events) != 2 || res.Cause != shutdown.CauseGuestShutdown {
		t.Errorf("Parse = %+v, want both events and GuestShutdown", res)
	}
}
