package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startOperator runs the operator binary (defaults: --hook-sidecar=auto follows KubeVirt's Sidecar gate, on here).
func (r *run) startOperator() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	r.metrics = fmt.Sprintf("127.0.0.1:%d", port)
	if port, err = freePort(); err != nil {
		return err
	}
	r.pprof = fmt.Sprintf("127.0.0.1:%d", port)
	logf, err := os.OpenFile(filepath.Join(r.cfg.out, fmt.Sprintf("operator-N%d.log", r.n)), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(r.cfg.operator, "--kubeconfig", r.kubecfg, "--leader-elect=false",
		// Plain HTTP on loopback: the bench scrapes without Kubernetes credentials.
		"--metrics-bind-address", r.metrics, "--metrics-secure=false", "--health-probe-bind-address", "0", "--pprof-bind-address", r.pprof,
		"--hook-sidecar-image", hookSidecarImage,
		"--restart-backoff-base", "1s", "--restart-backoff-max", "4s", "--restart-request", r.cfg.restartRequest)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(done) }()
	r.op, r.opDone = cmd, done
	return nil
}

// operatorPID is the running operator's pid, 0 when none runs.
func (r *run) operatorPID() int {
	if r.op == nil || r.op.Process == nil {
		return 0
	}
	select {
	case <-r.opDone:
		return 0
	default:
		return r.op.Process.Pid
	}
}

// sampleRSS records the running operator's peak RSS (VmHWM) and returns it in MiB.
func (r *run) sampleRSS() float64 {
	pid := r.operatorPID()
	if pid == 0 {
		return 0
	}
	hwm, err := memKiB(pid)
	if err != nil {
		return 0
	}
	r.hwm = max(r.hwm, hwm)
	return float64(hwm) / 1024
}

// heapProfile saves the operator's heap profile (go tool pprof -sample_index=inuse_space) under the results
// folder, to show what the operator's memory holds at N VMs.
func (r *run) heapProfile() error {
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get("http://" + r.pprof + "/debug/pprof/heap")
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(r.cfg.out, fmt.Sprintf("heap-N%d.pprof", r.n)), b, 0o644)
}

func (r *run) stopOperator() {
	if r.op == nil {
		return
	}
	select {
	case <-r.opDone:
		return
	default:
	}
	_ = r.op.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.opDone:
	case <-time.After(30 * time.Second):
		_ = r.op.Process.Kill()
		<-r.opDone
	}
}
