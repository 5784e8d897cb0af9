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

	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/info"
)

// The test binary doubles as the sidecar binary: with this variable set it runs main's logic instead of the tests.
const runAsSidecar = "RUNPOLICY_TEST_RUN_HOOK_SIDECAR"

func TestMain(m *testing.M) {
	if os.Getenv(runAsSidecar) == "1" {
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func sidecarCmd(t *testing.T, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runAsSidecar+"=1")
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
