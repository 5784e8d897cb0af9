//go:build !unit

package hooksidecar

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runpolicy/runpolicy/internal/hooksidecar/qmp"

	testguest "github.com/runpolicy/runpolicy/test/guest"
)

// bootTimeout bounds one boot of the tiny guest: about 2 s under TCG on an idle machine, but a boot and reboot once
// took longer than a minute on a shared 2-core machine running builds beside the tests. Only a broken run waits.
const bootTimeout = 3 * time.Minute

// guest is the tiny test guest built by test/guest/setup.sh.
type guest struct {
	qemu, kernel, initrd string
}

// requireGuest finds qemu and the guest built by test/guest/setup.sh (RUNPOLICY_GUEST_DIR, else <repo>/bin/guest).
// Without them unavailable skips the test, or fails it when RUNPOLICY_REQUIRE_GUEST=1.
func requireGuest(t *testing.T) guest {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		testguest.Unavailable(t, "qemu-system-x86_64 not found (apt-get install qemu-system-x86, or run test/guest/setup.sh)")
	}
	dir := testguest.Dir(t)
	return guest{qemu: qemu, kernel: filepath.Join(dir, testguest.Kernel), initrd: filepath.Join(dir, testguest.Initrd)}
}

// baseDomain is the libvirt domain of the tiny guest as a KubeVirt-like launcher would define it, before the hook.
func (g guest) baseDomain(name, action, serialLog string) []byte {
	return fmt.Appendf(nil, `<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>console=ttyS0 quiet action=%s</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type='usb' model='none'/>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
`, name, g.kernel, g.initrd, action, serialLog)
}

// qemuArgs turns a domain produced by OnDefineDomain into a direct qemu command line: the tiny guest, paused (-S)
// with a control monitor for the test, plus exactly what the hook put in the domain — its <qemu:commandline>
// arguments, and on_reboot=destroy, which libvirt implements as set-action reboot=shutdown.
func (g guest) qemuArgs(t *testing.T, domainXML []byte, action, ctlSocket, serialLog string) []string {
	t.Helper()
	args := []string{
		"-accel", "tcg", "-machine", "pc", "-m", "128", "-smp", "1",
		"-nographic", "-nodefaults", "-no-user-config", "-serial", "file:" + serialLog,
		"-S", "-qmp", "unix:" + ctlSocket + ",server=on,wait=off",
		"-kernel", g.kernel, "-initrd", g.initrd, "-append", "console=ttyS0 quiet action=" + action,
	}
	extra, err := QEMUCommandlineArgs(domainXML)
	if err != nil {
		t.Fatal(err)
	}
	if len(extra) == 0 {
		t.Fatalf("the hook added no QEMU arguments:\n%s", domainXML)
	}
	args = append(args, extra...)
	if !strings.Contains(string(domainXML), "<on_reboot>destroy</on_reboot>") {
		t.Fatalf("the hook did not set on_reboot=destroy:\n%s", domainXML)
	}
	return append(args, "-action", "reboot=shutdown")
}

// qemuProcess is a running qemu; exited is closed when it has been reaped, err holds its exit status then.
type qemuProcess struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// startQEMU starts qemu and kills it at the end of the test if it is still running.
func startQEMU(t *testing.T, qemu string, args []string) *qemuProcess {
	t.Helper()
	p := &qemuProcess{cmd: exec.Command(qemu, args...), exited: make(chan struct{})}
	var stderr strings.Builder
	p.cmd.Stderr = &stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("qemu stderr:\n%s", stderr.String())
		}
	})
	return p
}

// qmpExecute runs one command on the test's control monitor (the one libvirt would hold): cont resumes the paused
// guest, system_reset is what libvirt's virDomainReset (KubeVirt's reset subresource) sends.
func qmpExecute(t *testing.T, ctlSocket, command string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, ctlSocket, 10*time.Second)
	if err != nil {
		t.Fatalf("control monitor: %v", err)
	}
	defer func() { _ = c.Close() }()
	if _, err := c.Execute(command, nil); err != nil {
		t.Fatalf("%s: %v", command, err)
	}
}

// waitBooted waits until the guest's init has run (its line on the serial console).
func waitBooted(t *testing.T, serialLog, action string, exited <-chan struct{}) {
	t.Helper()
	want := "RUNPOLICY-GUEST booted action=" + action
	deadline := time.After(bootTimeout)
	for {
		if b, _ := os.ReadFile(serialLog); strings.Contains(string(b), want) {
			return
		}
		select {
		case <-exited:
			t.Fatal("the guest ended before it booted")
		case <-deadline:
			b, _ := os.ReadFile(serialLog)
			t.Fatalf("the guest did not boot within %s; serial log:\n%s", bootTimeout, b)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
