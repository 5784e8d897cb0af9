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
	script := filepath.Join(repoRoot(t), "test", "guest", "libvirt.sh")
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

// TestLibvirtGuestReset defines the domain produced by OnDefineDomain in a real libvirtd and starts it; the guest
// reboots, libvirt turns that into an exit (on_reboot=destroy) and then SIGTERMs QEMU. The sidecar, connected
// through the socket the hook added, must report guest-reset, with the trailing host-signal not hiding it.
func TestLibvirtGuestReset(t *testing.T) {
	g := requireGuest(t)
	requireLibvirt(t)

	dir := t.TempDir()
	serial := filepath.Join(dir, "serial.log")
	name := fmt.Sprintf("runpolicy-test-%d", os.Getpid())
	sc := startSidecar(t, dir, bootTimeout)
	domain := sc.defineDomain(t, g.baseDomain(name, "reboot", serial))
	xmlPath := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xmlPath, domain, 0o644); err != nil {
		t.Fatal(err)
	}

	virsh(t, "define", xmlPath)
	t.Cleanup(func() {
		_ = exec.Command("virsh", "-q", "-c", "qemu:///system", "destroy", name).Run()
		_ = exec.Command("virsh", "-q", "-c", "qemu:///system", "undefine", name).Run()
	})
	defined := virsh(t, "dumpxml", "--inactive", name)
	if !strings.Contains(defined, "<on_reboot>destroy</on_reboot>") || !strings.Contains(defined, "id="+QMPChardevID) {
		t.Fatalf("libvirt dropped the hook's changes:\n%s", defined)
	}
	virsh(t, "start", name)

	if err := sc.wait(t); err != nil {
		t.Fatalf("sidecar: %v", err)
	}
	res := sc.result(t)
	if res.Cause != shutdown.CauseGuestReset || !res.Event.Guest {
		t.Errorf("parsed %q from %+v, want GuestReset from a guest event", res.Cause, res.Event)
	}
	if len(res.Events) == 0 || res.Events[0].Reason != shutdown.QEMUGuestReset {
		t.Errorf("first event %+v, want guest-reset", res.Events)
	}
	// libvirt runs QEMU with -no-shutdown and kills it after the guest's SHUTDOWN: the host event follows.
	if len(res.Events) != 2 || res.Events[1].Reason != "host-signal" || res.Events[1].Guest {
		t.Errorf("events %+v, want guest-reset then host-signal", res.Events)
	}

	deadline := time.Now().Add(bootTimeout)
	for !strings.Contains(virsh(t, "domstate", name), "shut off") {
		if time.Now().After(deadline) {
			t.Fatalf("domain still %q after the guest rebooted (on_reboot=destroy)", virsh(t, "domstate", name))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if b, _ := os.ReadFile(serial); !strings.Contains(string(b), "RUNPOLICY-GUEST booted action=reboot") {
		t.Errorf("the guest did not run its reboot action; serial log:\n%s", b)
	}
}
