//go:build !unit

package hooksidecar

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// TestQEMUGuest boots the tiny guest under real QEMU with the monitor the hook adds, the sidecar in the launcher
// pod's hooks layout (startSidecar), and checks what the sidecar writes to its termination log for an in-guest
// reboot, an in-guest poweroff, a QMP system_reset from outside (virtctl reset) and a SIGTERM from outside.
func TestQEMUGuest(t *testing.T) {
	g := requireGuest(t)
	tests := []struct {
		name, action string
		// reset sends QMP system_reset once the guest has booted, as libvirt does for KubeVirt's reset subresource.
		reset bool
		// sigterm stops the sidecar and QEMU from outside, as a pod deletion does.
		sigterm    bool
		wantCause  shutdown.Cause
		wantGuest  bool
		wantReason string
	}{
		{name: "reboot", action: "reboot", wantCause: shutdown.CauseGuestReset, wantGuest: true, wantReason: "guest-reset"},
		{name: "poweroff", action: "poweroff", wantCause: shutdown.CauseGuestShutdown, wantGuest: true, wantReason: "guest-shutdown"},
		{name: "system_reset", action: "hang", reset: true, wantCause: shutdown.CauseHostReset, wantGuest: false,
			wantReason: "host-qmp-system-reset"},
		{name: "sigterm", action: "hang", sigterm: true, wantCause: shutdown.CauseHost, wantGuest: false, wantReason: "host-signal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			serial := filepath.Join(dir, "serial.log")
			ctl := filepath.Join(dir, "ctl.qmp")
			sc := startSidecar(t, bootTimeout)
			domain := sc.defineDomain(t, g.baseDomain("tiny-"+tt.name, tt.action, serial))

			q := startQEMU(t, g.qemu, g.qemuArgs(t, domain, tt.action, ctl, serial))
			sc.waitConnected(t, q.exited)
			qmpExecute(t, ctl, "cont")
			switch {
			case tt.reset:
				waitBooted(t, serial, tt.action, q.exited)
				qmpExecute(t, ctl, "system_reset")
			case tt.sigterm:
				// Pod deletion: the sidecar is told to stop too, but once connected it keeps reading until QEMU
				// exits, so the stop is still recorded.
				sc.stop(t)
				if err := q.cmd.Process.Signal(syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
			}
			if err := sc.wait(t); err != nil {
				t.Fatalf("sidecar: %v, want a clean exit when QEMU's monitor closes", err)
			}
			select {
			case <-q.exited:
				if q.err != nil {
					t.Errorf("qemu: %v", q.err)
				}
			case <-time.After(bootTimeout):
				t.Fatal("qemu still running after its monitor closed")
			}

			res := sc.result(t)
			if res.Cause != tt.wantCause || res.Event.Guest != tt.wantGuest || res.Event.Reason != tt.wantReason {
				t.Errorf("parsed %q from %+v, want %q (guest=%v reason=%s)", res.Cause, res.Event, tt.wantCause, tt.wantGuest, tt.wantReason)
			}
			if len(res.Events) != 1 {
				t.Errorf("%d SHUTDOWN events, want 1 (QEMU exits after it)", len(res.Events))
			}
			if res.Event.Time.IsZero() {
				t.Error("event has no time")
			}
		})
	}
}

// TestQEMUDiesAtStart: QEMU gets the hook's arguments but fails to start (its kernel does not exist). The sidecar
// must not hang: it exits 1 with a clear error once its connect timeout passes.
func TestQEMUDiesAtStart(t *testing.T) {
	g := requireGuest(t)
	g.kernel = filepath.Join(t.TempDir(), "no-such-kernel")
	dir := t.TempDir()
	serial := filepath.Join(dir, "serial.log")
	sc := startSidecar(t, 3*time.Second)
	domain := sc.defineDomain(t, g.baseDomain("tiny-broken", "reboot", serial))

	q := startQEMU(t, g.qemu, g.qemuArgs(t, domain, "reboot", filepath.Join(dir, "ctl.qmp"), serial))
	select {
	case <-q.exited:
		if q.err == nil {
			t.Fatal("qemu started with a missing kernel; the test does not test what it claims")
		}
	case <-time.After(bootTimeout):
		t.Fatal("qemu did not exit")
	}
	if code := exitCode(sc.wait(t)); code != 1 {
		t.Fatalf("sidecar exit code %d although QEMU never ran, want 1", code)
	}
	if log := sc.logs.String(); !strings.Contains(log, "runpolicy.qmp was not usable within 3s") {
		t.Errorf("the sidecar's log does not say what went wrong:\n%s", log)
	}
	if res := sc.result(t); len(res.Events) != 0 {
		t.Errorf("termination log has events: %+v", res.Events)
	}
}
