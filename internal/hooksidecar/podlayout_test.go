//go:build !unit

package hooksidecar

import (
	"bufio"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/v1alpha3"
	"github.com/runpolicy/runpolicy/internal/shutdown"

	testguest "github.com/runpolicy/runpolicy/test/guest"
)

// The real-QEMU tests run the sidecar in the launcher pod's layout. KubeVirt mounts the hook-sidecar-sockets
// emptyDir into the compute container at /var/run/kubevirt-hooks and into each sidecar container at the same path
// with subPath=<container name> (pkg/virt-controller/services/template.go): two views of one directory tree.
// Here the compute side is the test process itself, with the QEMU or libvirtd it starts: it sees the emptyDir at
// the hooks path. The sidecar is this test binary re-executed in a private mount namespace, where its own
// subdirectory hook-sidecar-0 is bind-mounted over the same hooks path. A socket path that is right in only one
// view (say, the sidecar's own path written into the domain) fails as it does in a real pod.

const (
	// sidecarChildEnv set to 1 makes the test binary run as the sidecar container (TestMain).
	sidecarChildEnv = "RUNPOLICY_TEST_HOOK_SIDECAR_CONTAINER"
	// sidecarHooksDirEnv is the hooks path, the same in both views; sidecarTermLogEnv and sidecarQMPTimeoutEnv set
	// the sidecar's termination log and QMP timeout.
	sidecarHooksDirEnv   = "RUNPOLICY_TEST_HOOKS_DIR"
	sidecarTermLogEnv    = "RUNPOLICY_TEST_TERMINATION_LOG"
	sidecarQMPTimeoutEnv = "RUNPOLICY_TEST_QMP_TIMEOUT"

	// sidecarContainer is the sidecar's container name, as KubeVirt names the first hook sidecar.
	sidecarContainer = "hook-sidecar-0"
	// msgConnected is the monitor's log message once QEMU's monitor is negotiated.
	msgConnected = "Connected to QEMU's QMP monitor"
)

func TestMain(m *testing.M) {
	if os.Getenv(sidecarChildEnv) == "1" {
		os.Exit(runSidecarContainer())
	}
	os.Exit(m.Run())
}

// runSidecarContainer is the sidecar container. It runs in a private mount namespace (startSidecar), mounts its
// emptyDir subdirectory $CONTAINER_NAME over the hooks path, as the kubelet does for the subPath mount, and runs the
// sidecar with both hooks directories at that path, as cmd/hook-sidecar does by default in the pod.
func runSidecarContainer() int {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	hooks, name := os.Getenv(sidecarHooksDirEnv), os.Getenv(ContainerNameEnv)
	if hooks == "" || name == "" {
		logger.Error("Sidecar container: no hooks path or container name")
		return 3
	}
	if err := syscall.Mount(filepath.Join(hooks, name), hooks, "", syscall.MS_BIND, ""); err != nil {
		logger.Error("Sidecar container: bind mount of the subPath", "error", err.Error())
		return 3
	}
	timeout, err := time.ParseDuration(os.Getenv(sidecarQMPTimeoutEnv))
	if err != nil {
		logger.Error("Sidecar container: QMP timeout", "error", err.Error())
		return 3
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err = Run(ctx, Config{
		HooksDir: hooks, ComputeHooksDir: hooks, ContainerName: name,
		SocketName: "runpolicy.sock", QMPSocketName: "runpolicy.qmp",
		TerminationLog: os.Getenv(sidecarTermLogEnv), QMPTimeout: timeout, Logger: logger,
	})
	if err != nil {
		logger.Error("Hook sidecar failed", "error", err.Error())
		return 1
	}
	return 0
}

// sidecar is the sidecar container process of one test pod.
type sidecar struct {
	// hooksDir is the emptyDir at the hooks path, as the compute side sees it.
	hooksDir string
	termLog  string
	cmd      *exec.Cmd
	logs     syncBuffer
	// connected is closed when the sidecar logs that it negotiated QEMU's monitor.
	connected chan struct{}
	// exited is closed once the process has been reaped; err is its exit status then.
	exited chan struct{}
	err    error
}

// requireMountNamespace: the pod layout needs a private mount namespace and a bind mount, so root. Without it the
// test is skipped, or fails when RUNPOLICY_REQUIRE_GUEST=1.
func requireMountNamespace(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testguest.Unavailable(t, "the launcher pod's hooks layout (a bind mount in a private mount namespace) needs root")
	}
}

// startSidecar creates a pod's hooks emptyDir and starts the sidecar container on it.
func startSidecar(t *testing.T, qmpTimeout time.Duration) *sidecar {
	t.Helper()
	requireMountNamespace(t)
	// Not t.TempDir: unix socket paths are limited to 108 bytes and test names can be long.
	root, err := os.MkdirTemp("", "runpolicy-pod-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	s := &sidecar{
		hooksDir:  filepath.Join(root, "kubevirt-hooks"),
		termLog:   filepath.Join(root, "termination-log"),
		connected: make(chan struct{}),
		exited:    make(chan struct{}),
	}
	if err := os.MkdirAll(filepath.Join(s.hooksDir, sidecarContainer), 0o755); err != nil {
		t.Fatal(err)
	}

	s.cmd = exec.Command(os.Args[0])
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, ContainerNameEnv+"=") {
			s.cmd.Env = append(s.cmd.Env, kv)
		}
	}
	s.cmd.Env = append(s.cmd.Env, sidecarChildEnv+"=1", ContainerNameEnv+"="+sidecarContainer,
		sidecarHooksDirEnv+"="+s.hooksDir, sidecarTermLogEnv+"="+s.termLog, sidecarQMPTimeoutEnv+"="+qmpTimeout.String())
	// A new mount namespace; Go makes / private in it before exec, so the child's mounts stay its own.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start the sidecar container: %v", err)
	}
	go func() {
		var once sync.Once
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			_, _ = s.logs.Write([]byte(line + "\n"))
			if strings.Contains(line, `"msg":"`+msgConnected+`"`) {
				once.Do(func() { close(s.connected) })
			}
		}
		s.err = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
		if t.Failed() {
			t.Logf("sidecar log:\n%s", s.logs.String())
		}
	})
	return s
}

// defineDomain plays virt-launcher in the compute container: it finds the sidecar's socket one directory below
// the hooks path (pkg/hooks/manager.go) and calls OnDefineDomain; it returns the new domain XML.
func (s *sidecar) defineDomain(t *testing.T, domain []byte) []byte {
	t.Helper()
	socket := filepath.Join(s.hooksDir, sidecarContainer, "runpolicy.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for { // the server starts concurrently; virt-launcher polls the same way until the socket is there
		if _, err := os.Stat(socket); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("hook socket %s never appeared", socket)
		case <-s.exited:
			t.Fatalf("the sidecar exited before serving the hook API: %v", s.err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// The layout check: what the sidecar serves at <hooks>/runpolicy.sock is in its subdirectory for compute.
	if entries, err := os.ReadDir(s.hooksDir); err != nil || len(entries) != 1 || entries[0].Name() != sidecarContainer {
		t.Fatalf("compute's view of the hooks emptyDir holds %v (%v), want only %s/", entries, err, sidecarContainer)
	}
	conn := dialLikeVirtLauncher(t, socket)
	res, err := v1alpha3.NewCallbacksClient(conn).OnDefineDomain(ctx, &v1alpha3.OnDefineDomainParams{DomainXML: domain})
	if err != nil {
		t.Fatalf("OnDefineDomain: %v", err)
	}
	return res.GetDomainXML()
}

// waitConnected waits until the sidecar negotiated QEMU's monitor; it fails when QEMU or the sidecar ends first.
func (s *sidecar) waitConnected(t *testing.T, qemuExited <-chan struct{}) {
	t.Helper()
	select {
	case <-s.connected:
	case <-s.exited:
		t.Fatalf("the sidecar exited without reaching QEMU's monitor: %v", s.err)
	case <-qemuExited:
		t.Fatal("QEMU exited before the sidecar reached its monitor")
	case <-time.After(bootTimeout):
		t.Fatalf("the sidecar did not reach QEMU's monitor within %s", bootTimeout)
	}
}

// stop sends SIGTERM to the sidecar, as the kubelet does when the pod is deleted.
func (s *sidecar) stop(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

// wait returns the sidecar's exit status (nil for exit 0).
func (s *sidecar) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-s.exited:
		return s.err
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

// inSidecar returns path as the sidecar process sees it, through its root in /proc (its mount namespace).
func (s *sidecar) inSidecar(path string) string {
	return filepath.Join("/proc", strconv.Itoa(s.cmd.Process.Pid), "root", path)
}

// TestPodLayoutSeparatesViews is the control for the layout itself. The sidecar must name the socket as compute
// sees it; QEMU given the sidecar's own view of the path instead (what the sidecar wrote into the domain before it
// knew its container name) creates the monitor at the emptyDir's root, which the sidecar does not see, so it never
// reaches QEMU and records nothing, as in a real pod. Were the two views one directory, this test would fail and the
// guest tests would prove nothing.
func TestPodLayoutSeparatesViews(t *testing.T) {
	g := requireGuest(t)
	sc := startSidecar(t, bootTimeout)
	dir := t.TempDir()
	serial, ctl := filepath.Join(dir, "serial.log"), filepath.Join(dir, "ctl.qmp")
	domain := sc.defineDomain(t, g.baseDomain("tiny-wrong-path", "hang", serial))
	ownView := filepath.Join(sc.hooksDir, "runpolicy.qmp")
	computeView := filepath.Join(sc.hooksDir, sidecarContainer, "runpolicy.qmp")
	if !strings.Contains(string(domain), "path="+computeView+",") {
		t.Fatalf("the domain does not name the QMP socket as compute sees it (%s):\n%s", computeView, domain)
	}
	wrong, err := MutateDomain(domain, ownView)
	if err != nil {
		t.Fatal(err)
	}

	q := startQEMU(t, g.qemu, g.qemuArgs(t, wrong, "hang", ctl, serial))
	deadline := time.After(bootTimeout)
	for { // QEMU creates its monitor socket at startup
		if st, err := os.Stat(ownView); err == nil && st.Mode()&os.ModeSocket != 0 {
			break
		}
		select {
		case <-q.exited:
			t.Fatalf("qemu exited: %v", q.err)
		case <-deadline:
			t.Fatalf("QEMU did not create %s", ownView)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// The same path in the sidecar's mount namespace is its own subdirectory: no monitor there, its hook socket is.
	if _, err := os.Stat(sc.inSidecar(ownView)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the sidecar sees QEMU's monitor at %s (%v): the two views are one directory", ownView, err)
	}
	if _, err := os.Stat(sc.inSidecar(filepath.Join(sc.hooksDir, "runpolicy.sock"))); err != nil {
		t.Fatalf("the sidecar does not see its hook socket in its own view: %v", err)
	}

	// Pod deletion: the sidecar, still waiting for a monitor it cannot see, ends with nothing to report.
	sc.stop(t)
	if err := sc.wait(t); err != nil {
		t.Fatalf("sidecar: %v", err)
	}
	log := sc.logs.String()
	if strings.Contains(log, msgConnected) || !strings.Contains(log, "Stopped before QEMU started") {
		t.Errorf("the sidecar's log does not show it waited in vain:\n%s", log)
	}
	if res := sc.result(t); len(res.Events) != 0 || res.Cause != shutdown.CauseUnknown {
		t.Errorf("termination log has %+v, want nothing", res)
	}
}

// exitCode is the exit status of a sidecar that ended with err (from wait).
func exitCode(err error) int {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
