package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/runpolicy/runpolicy/internal/hooksidecar"
	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/info"
	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/v1alpha3"
)

// The test binary doubles as the sidecar binary: with this variable set it runs main's logic instead of the tests.
const runAsSidecar = "RUNPOLICY_TEST_RUN_HOOK_SIDECAR"

func TestMain(m *testing.M) {
	if os.Getenv(runAsSidecar) == "1" {
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// sidecarCmd starts the sidecar binary with args, CONTAINER_NAME=hook-sidecar-0 as KubeVirt sets it.
func sidecarCmd(t *testing.T, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	return sidecarCmdEnv(t, []string{hooksidecar.ContainerNameEnv + "=hook-sidecar-0"}, args...)
}

// sidecarCmdEnv starts the sidecar binary with args and env added to the test's environment (without its
// CONTAINER_NAME, if any).
func sidecarCmdEnv(t *testing.T, env []string, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, hooksidecar.ContainerNameEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(append(cmd.Env, runAsSidecar+"=1"), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("sidecar stderr:\n%s", stderr.String())
		}
	})
	return cmd, &stderr
}

// waitInfo calls Info on the sidecar's socket as virt-launcher does, retrying until the server is up.
func waitInfo(t *testing.T, socket string) *info.InfoResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if _, err := os.Stat(socket); err == nil {
			conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = conn.Close() }()
			res, err := info.NewInfoClient(conn).Info(ctx, &info.InfoParams{})
			if err != nil {
				t.Fatalf("Info: %v", err)
			}
			return res
		}
		select {
		case <-ctx.Done():
			t.Fatalf("hook socket %s never appeared", socket)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func exitCode(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(60 * time.Second):
		t.Fatal("sidecar did not exit")
		return -1
	}
}

// TestQMPSocketNeverAppears: no QEMU ever starts. The binary serves the hook API meanwhile, then gives up after
// --qmp-timeout with a non-zero exit and a log line that says why.
func TestQMPSocketNeverAppears(t *testing.T) {
	dir := t.TempDir()
	cmd, stderr := sidecarCmd(t, "--hooks-dir", dir, "--termination-log", filepath.Join(dir, "termination-log"),
		"--qmp-timeout", "2s")
	if res := waitInfo(t, filepath.Join(dir, "runpolicy.sock")); res.GetName() != "runpolicy" {
		t.Errorf("Info name = %q", res.GetName())
	}
	if code := exitCode(t, cmd); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	log := stderr.String()
	for _, want := range []string{`"level":"ERROR"`, `"msg":"Hook sidecar failed"`, "runpolicy.qmp was not usable within 2s"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "runpolicy.sock")); !os.IsNotExist(err) {
		t.Errorf("hook socket left behind: %v", err)
	}
}

// TestSIGTERMBeforeQEMU: the pod is deleted before QEMU ever started; nothing to report, clean exit.
func TestSIGTERMBeforeQEMU(t *testing.T) {
	dir := t.TempDir()
	cmd, stderr := sidecarCmd(t, "--hooks-dir", dir, "--termination-log", filepath.Join(dir, "termination-log"))
	waitInfo(t, filepath.Join(dir, "runpolicy.sock"))
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := exitCode(t, cmd); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if !strings.Contains(stderr.String(), "Stopped before QEMU started") {
		t.Errorf("no log line for the early stop:\n%s", stderr.String())
	}
}

func TestBadFlag(t *testing.T) {
	cmd, _ := sidecarCmd(t, "--no-such-flag")
	if code := exitCode(t, cmd); code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
}

// TestContainerNameRequired: without KubeVirt's CONTAINER_NAME the sidecar cannot know the path QEMU sees, so it
// refuses to start (exit 2, a log line naming CONTAINER_NAME) and serves nothing; virt-launcher then fails the VMI
// instead of running it with a monitor the sidecar never reaches.
func TestContainerNameRequired(t *testing.T) {
	for name, env := range map[string][]string{
		"unset":   nil,
		"empty":   {hooksidecar.ContainerNameEnv + "="},
		"invalid": {hooksidecar.ContainerNameEnv + "=../compute"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			cmd, stderr := sidecarCmdEnv(t, env, "--hooks-dir", dir, "--termination-log", filepath.Join(dir, "termination-log"))
			if code := exitCode(t, cmd); code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			log := stderr.String()
			for _, want := range []string{`"level":"ERROR"`, `"msg":"Invalid hook sidecar configuration"`, "CONTAINER_NAME"} {
				if !strings.Contains(log, want) {
					t.Errorf("log lacks %q:\n%s", want, log)
				}
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("the sidecar created %v before refusing to start", entries)
			}
		})
	}
}

// TestDomainNamesComputeView: with its defaults the sidecar (which sees only its own subdirectory of the hooks
// emptyDir) writes the QMP socket into the domain as the compute container sees it,
// /var/run/kubevirt-hooks/$CONTAINER_NAME/runpolicy.qmp, and waits for it in its own hooks directory.
func TestDomainNamesComputeView(t *testing.T) {
	dir := t.TempDir()
	cmd, stderr := sidecarCmdEnv(t, []string{hooksidecar.ContainerNameEnv + "=hook-sidecar-3"},
		"--hooks-dir", dir, "--termination-log", filepath.Join(dir, "termination-log"))
	socket := filepath.Join(dir, "runpolicy.sock")
	waitInfo(t, socket)
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := v1alpha3.NewCallbacksClient(conn).OnDefineDomain(ctx, &v1alpha3.OnDefineDomainParams{
		DomainXML: []byte(`<domain type="kvm"><name>default_vm</name></domain>`)})
	if err != nil {
		t.Fatalf("OnDefineDomain: %v", err)
	}
	args, err := hooksidecar.QEMUCommandlineArgs(res.GetDomainXML())
	if err != nil {
		t.Fatal(err)
	}
	want := "path=/var/run/kubevirt-hooks/hook-sidecar-3/runpolicy.qmp,"
	if len(args) < 2 || args[0] != "-chardev" || !strings.Contains(args[1], want) {
		t.Errorf("QEMU arguments %q, want a -chardev with %s", args, want)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := exitCode(t, cmd); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	waiting := `"msg":"Waiting for QEMU's QMP socket","socket":"` + filepath.Join(dir, "runpolicy.qmp") + `"`
	if !strings.Contains(stderr.String(), waiting) {
		t.Errorf("the sidecar did not wait for the socket in its own hooks directory (%s):\n%s", waiting, stderr.String())
	}
}
