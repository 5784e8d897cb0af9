package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/runpolicy/runpolicy/test/chartrbac"
	"github.com/runpolicy/runpolicy/test/cluster"
)

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// chartOperators holds, per cluster, the operator's identity as the chart installs it (one install per cluster; the
// operator is started again on the same cluster by the restart phase).
var chartOperators sync.Map // *cluster.Env → *chartrbac.Operator

// operatorChartValues are the chart values of the bench's operator: one replica without leader election (its Lease
// renewals would count among its writes), plain HTTP metrics (the bench scrapes without credentials), the bench's
// hook sidecar image and a short restart backoff. --hook-sidecar stays auto: it follows KubeVirt's Sidecar gate, on
// here.
func operatorChartValues() []string {
	return append(append(chartrbac.HookSidecarImage(hookSidecarImage), chartrbac.SingleReplica...),
		"metrics.secure=false", "restartBackoff.base=1s", "restartBackoff.max=4s")
}

// chartOperator installs the chart's RBAC and admission policies into env's cluster, once, and returns the
// operator's identity and command line.
func chartOperator(ctx context.Context, env *cluster.Env, values []string) (*chartrbac.Operator, error) {
	if op, ok := chartOperators.Load(env); ok {
		return op.(*chartrbac.Operator), nil
	}
	op, err := chartrbac.Install(ctx, env, values...)
	if err != nil {
		return nil, fmt.Errorf("installing the chart's RBAC: %w", err)
	}
	chartOperators.Store(env, op)
	return op, nil
}

// operatorCommand is the operator binary run as the chart's Deployment runs it: the rendered args and environment,
// the ServiceAccount's token; then local, the flags of a process on this host (its listen addresses), which a pod
// would not need.
func operatorCommand(binary string, op *chartrbac.Operator, local ...string) *exec.Cmd {
	args := append(append([]string{"--kubeconfig", op.Kubeconfig}, op.Args...), local...)
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), op.Env...)
	return cmd
}

// startOperator runs the operator binary as the chart does (chartOperator), with the bench's --restart-request.
func (r *run) startOperator() error {
	op, err := chartOperator(r.ctx, r.env, operatorChartValues())
	if err != nil {
		return err
	}
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
	// The chart has no value for --restart-request: the bench compares both.
	cmd := operatorCommand(r.cfg.operator, op, "--metrics-bind-address="+r.metrics, "--health-probe-bind-address=0",
		"--pprof-bind-address="+r.pprof, "--restart-request="+r.cfg.restartRequest)
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
