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

	"google.golang.org/grpc"

	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/v1alpha3"
	"github.com/runpolicy/runpolicy/internal/hooksidecar/qmp"
	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// bootTimeout bounds one boot of the tiny guest (about 2 s under TCG; generous for a loaded CI machine).
const bootTimeout = 60 * time.Second

// guest is the tiny test guest built by test/guest/setup.sh.
type guest struct {
	qemu, kernel, initrd string
}

// requireGuest finds qemu and the guest built by test/guest/setup.sh (RUNPOLICY_GUEST_DIR, else <repo>/bin/guest).
// Without them the test is skipped, or fails when RUNPOLICY_REQUIRE_GUEST=1 (CI sets it, so a broken setup cannot
// pass as a skip).
func requireGuest(t *testing.T) guest {
	t.Helper()
	unavailable := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("RUNPOLICY_REQUIRE_GUEST") == "1" {
			t.Fatalf("%s (RUNPOLICY_REQUIRE_GUEST=1)", msg)
		}
		t.Skipf("skipping real-QEMU test: %s", msg)
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		unavailable("qemu-system-x86_64 not found (apt-get install qemu-system-x86, or run test/guest/setup.sh)")
	}
	dir := os.Getenv("RUNPOLICY_GUEST_DIR")
	if dir == "" {
		dir = filepath.Join(repoRoot(t), "bin", "guest")
	}
	g := guest{qemu: qemu, kernel: filepath.Join(dir, "vmlinux"), initrd: filepath.Join(dir, "initramfs.cpio.gz")}
	for _, f := range []string{g.kernel, g.initrd} {
		if _, err := os.Stat(f); err != nil {
			unavailable("guest not built: %v (run test/guest/setup.sh %s)", err, dir)
		}
	}
	return g
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("repository root (go.mod) not found")
		}
		dir = parent
	}
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

// sidecar runs Run (gRPC server + monitor) in dir, the way the sidecar container runs in the launcher pod.
type sidecar struct {
	dir, termLog string
	connected    chan struct{}
	done         chan error
	// stop cancels Run's context, as SIGTERM to the sidecar container does.
	stop context.CancelFunc
}

func startSidecar(t *testing.T, dir string, qmpTimeout time.Duration) *sidecar {
	t.Helper()
	logger, _ := testLogger(t)
	s := &sidecar{dir: dir, termLog: filepath.Join(dir, "termination-log"), connected: make(chan struct{}), done: make(chan error, 1)}
	cfg := Config{
		HooksDir: dir, SocketName: "runpolicy.sock", QMPSocketName: "runpolicy.qmp",
		TerminationLog: s.termLog, QMPTimeout: qmpTimeout, Logger: logger,
		OnConnected: func() { close(s.connected) },
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s.stop = cancel
	go func() { s.done <- Run(ctx, cfg) }()
	return s
}

// defineDomain calls OnDefineDomain on the sidecar's socket as virt-launcher does and returns the new XML.
func (s *sidecar) defineDomain(t *testing.T, domain []byte) []byte {
	t.Helper()
	socket := filepath.Join(s.dir, "runpolicy.sock")
	var conn *grpc.ClientConn
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for { // the server starts concurrently; virt-launcher retries the same way until the socket is there
		if _, err := os.Stat(socket); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("hook socket %s never appeared", socket)
		case <-time.After(20 * time.Millisecond):
		}
	}
	conn = dialLikeVirtLauncher(t, socket)
	res, err := v1alpha3.NewCallbacksClient(conn).OnDefineDomain(ctx, &v1alpha3.OnDefineDomainParams{DomainXML: domain})
	if err != nil {
		t.Fatalf("OnDefineDomain: %v", err)
	}
	return res.GetDomainXML()
}

func (s *sidecar) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.done:
		return err
	case <-time.After(bootTimeout):
		t.Fatalf("sidecar did not exit within %s", bootTimeout)
		return nil
	}
}

func (s *sidecar) result(t *testing.T) shutdown.Result {
	t.Helper()
	b, err := os.ReadFile(s.termLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("termination log:\n%s", b)
	return shutdown.Parse(string(b))
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

// cont resumes the paused guest through the test's control monitor.
func cont(t *testing.T, ctlSocket string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, ctlSocket, 10*time.Second)
	if err != nil {
		t.Fatalf("control monitor: %v", err)
	}
	defer func() { _ = c.Close() }()
	if _, err := c.Execute("cont", nil); err != nil {
		t.Fatalf("cont: %v", err)
	}
}
