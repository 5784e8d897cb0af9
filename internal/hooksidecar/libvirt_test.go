//go:build !unit

package hooksidecar

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runpolicy/runpolicy/internal/shutdown"

	testguest "github.com/runpolicy/runpolicy/test/guest"
)

// requireLibvirt makes a system libvirtd available through test/guest/libvirt.sh (root, no systemd), stopping it
// at the end when this test started it. Skipped without root or the libvirt packages, or with
// RUNPOLICY_SKIP_LIBVIRT=1; RUNPOLICY_REQUIRE_GUEST=1 turns a missing package into a failure.
func requireLibvirt(t *testing.T) {
	t.Helper()
	if os.Getenv("RUNPOLICY_SKIP_LIBVIRT") == "1" {
		t.Skip("skipping the libvirt tier: RUNPOLICY_SKIP_LIBVIRT=1")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping the libvirt tier: system-mode libvirtd needs root")
	}
	for _, bin := range []string{"libvirtd", "virsh"} {
		if _, err := exec.LookPath(bin); err != nil {
			msg := fmt.Sprintf("%s not found (apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)", bin)
			if os.Getenv("RUNPOLICY_REQUIRE_GUEST") == "1" {
				t.Fatalf("%s (RUNPOLICY_REQUIRE_GUEST=1)", msg)
			}
			t.Skipf("skipping the libvirt tier: %s", msg)
		}
	}
	script := filepath.Join(testguest.RepoRoot(t), "test", "guest", "libvirt.sh")
	out, err := exec.Command(script, "start").CombinedOutput()
	if err != nil {
		t.Fatalf("%s start: %v\n%s", script, err, out)
	}
	if strings.TrimSpace(string(out)) == "started" {
		t.Cleanup(func() {
			if out, err := exec.Command(script, "stop").CombinedOutput(); err != nil {
				t.Errorf("%s stop: %v\n%s", script, err, out)
			}
		})
	}
}

func virsh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("virsh", append([]string{"-q", "-c", "qemu:///system"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("virsh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestLibvirtGuest defines the domain produced by OnDefineDomain in a real libvirtd, with the sidecar in the
// launcher pod's hooks layout (startSidecar): libvirtd and the QEMU it starts (no namespaces, as in KubeVirt's
// qemu.conf) see the whole emptyDir, the sidecar its own subdirectory. The guest reboots or powers off, or the
// domain is reset from outside with virsh reset (virDomainReset, what KubeVirt's reset subresource calls); libvirt
// turns each into an exit (on_reboot=destroy) and then SIGTERMs QEMU. The sidecar must record the reason, with the
// trailing host-signal not hiding it.
func TestLibvirtGuest(t *testing.T) {
	g := requireGuest(t)
	requireLibvirt(t)
	tests := []struct {
		name, action string
		// reset runs virsh reset once the guest has booted.
		reset      bool
		wantCause  shutdown.Cause
		wantGuest  bool
		wantReason string
	}{
		{name: "reboot", action: "reboot", wantCause: shutdown.CauseGuestReset, wantGuest: true, wantReason: shutdown.QEMUGuestReset},
		{name: "poweroff", action: "poweroff", wantCause: shutdown.CauseGuestShutdown, wantGuest: true, wantReason: shutdown.QEMUGuestShutdown},
		{name: "reset", action: "hang", reset: true, wantCause: shutdown.CauseHostReset, wantReason: shutdown.QEMUHostReset},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			serial := filepath.Join(dir, "serial.log")
			name := fmt.Sprintf("runpolicy-test-%d-%s", os.Getpid(), tt.name)
			sc := startSidecar(t, bootTimeout)
			domain := sc.defineDomain(t, g.baseDomain(name, tt.action, serial))
			xmlPath := filepath.Join(dir, "domain.xml")
			if err := os.WriteFile(xmlPath, domain, 0o644); err != nil {
				t.Fatal(err)
			}

			virsh(t, "define", xmlPath)
			t.Cleanup(func() {
				if t.Failed() {
					state, _ := exec.Command("virsh", "-q", "-c", "qemu:///system", "domstate", "--reason", name).CombinedOutput()
					b, _ := os.ReadFile(serial)
					t.Logf("domain state: %s\nserial log:\n%s", state, b)
				}
				_ = exec.Command("virsh", "-q", "-c", "qemu:///system", "destroy", name).Run()
				_ = exec.Command("virsh", "-q", "-c", "qemu:///system", "undefine", name).Run()
			})
			defined := virsh(t, "dumpxml", "--inactive", name)
			if !strings.Contains(defined, "<on_reboot>destroy</on_reboot>") || !strings.Contains(defined, "id="+QMPChardevID) {
				t.Fatalf("libvirt dropped the hook's changes:\n%s", defined)
			}
			// Paused until the sidecar is on QEMU's monitor, so no event can come before it listens.
			virsh(t, "start", "--paused", name)
			sc.waitConnected(t, nil)
			virsh(t, "resume", name)
			if tt.reset {
				waitBooted(t, serial, tt.action, sc.exited)
				virsh(t, "reset", name)
			}

			if err := sc.wait(t); err != nil {
				t.Fatalf("sidecar: %v", err)
			}
			res := sc.result(t)
			if res.Cause != tt.wantCause || res.Event.Guest != tt.wantGuest || res.Event.Reason != tt.wantReason {
				t.Errorf("parsed %q from %+v, want %q (guest=%v reason=%s)", res.Cause, res.Event, tt.wantCause, tt.wantGuest, tt.wantReason)
			}
			// libvirt runs QEMU with -no-shutdown and kills it after the SHUTDOWN event: usually QEMU reports the
			// signal as a host event before the monitor closes, sometimes it is gone first. Either way the first event
			// is the one that decides, and nothing else may appear.
			if len(res.Events) == 0 || len(res.Events) > 2 || res.Events[0].Reason != tt.wantReason ||
				len(res.Events) == 2 && (res.Events[1].Reason != "host-signal" || res.Events[1].Guest) {
				t.Errorf("events %+v, want %s, then at most libvirt's host-signal", res.Events, tt.wantReason)
			}

			// Shutoff with reason shutdown, not destroyed or crashed: virt-handler reports such a domain as a
			// Succeeded VMI (pkg/virt-handler/vm.go), whatever the SHUTDOWN reason was.
			deadline := time.Now().Add(bootTimeout)
			for {
				state := strings.TrimSpace(virsh(t, "domstate", "--reason", name))
				if strings.HasPrefix(state, "shut off") {
					if state != "shut off (shutdown)" {
						t.Errorf("domain state %q, want shut off (shutdown)", state)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("domain still %q after the SHUTDOWN event (on_reboot=destroy)", state)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if b, _ := os.ReadFile(serial); !strings.Contains(string(b), "RUNPOLICY-GUEST booted action="+tt.action) {
				t.Errorf("the guest did not run its %s action; serial log:\n%s", tt.action, b)
			}
		})
	}
}
