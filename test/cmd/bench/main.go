// Command bench measures runpolicy at scale on the offline test cluster and the KubeVirt stand-in, with the
// real operator binary as a child process (so its RSS and CPU are its own):
//
//   - time for N VMs to converge after creation;
//   - time for a plain operator restart (nothing changed) to reconcile every VM once, and the writes it makes
//     (there should be none);
//   - time to converge after an operator restart with every VM's spec changed while it was down, so every VM
//     needs a write;
//   - guest reset → new VMI latency (p50/p99) under a stream of resets, beside the apiserver's round trip for
//     one write (the floor: a ConfigMap patch, and a patch of a runpolicy.io VirtualMachine, the kind of object
//     the operator writes) and the operator's mean reconcile time; the operator's part (VMI final → its start
//     call) is split at its status write, from the audit log;
//   - API writes per restart, counted from kube-apiserver's audit log by the operator's user agent, with the
//     Events apart from the state writes;
//   - operator peak RSS (VmHWM, per operator process) and CPU, the CPU of every other component, to show where
//     time goes, and the operator's heap profile at the end (heap-N<n>.pprof).
//
// It prints a table and writes it, a JSON file and a PNG plot (latency vs N) under -out. Nothing is asserted.
//
//	go run ./test/cmd/bench -n 100,1000 -resets 200
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/fixture"
	"github.com/runpolicy/runpolicy/test/kubevirt"
)

type config struct {
	ns         []int
	mix        []v1alpha1.RunPolicy // cycled over the VMs
	resets     int
	resetRate  float64
	out        string
	operator   string
	phaseLimit time.Duration
	workers    int
	floorN     int
	seed       uint64
	keepAudit  bool
}

func main() {
	var c config
	nList := flag.String("n", "100,1000,5000", "Comma-separated VM counts, one run (fresh cluster) each.")
	policies := flag.String("policies", "AlwaysOnUntilStoppedManually:2,AlwaysOn:1,Manual:1",
		"Policy mix, Policy:weight,... (AlwaysOff, AlwaysOn, Manual, AlwaysOnUntilStoppedManually).")
	flag.IntVar(&c.resets, "resets", 200, "Guest resets in the reset stream (on running AlwaysOnUntilStoppedManually VMs).")
	flag.Float64Var(&c.resetRate, "reset-rate", 10, "Guest resets started per second.")
	flag.StringVar(&c.out, "out", filepath.Join(cluster.RepoRoot(), "test", "results"), "Results folder.")
	flag.StringVar(&c.operator, "operator", filepath.Join(cluster.RepoRoot(), "bin", "runpolicy-controller"), "Operator binary (make build).")
	flag.DurationVar(&c.phaseLimit, "phase-timeout", 10*time.Minute, "Give up on a phase (convergence, resets) after this long.")
	flag.IntVar(&c.workers, "workers", 8, "Concurrent clients creating/updating VMs.")
	flag.IntVar(&c.floorN, "floor-writes", 200, "Sequential writes measuring the apiserver's round trip.")
	flag.Uint64Var(&c.seed, "seed", 1, "Random seed (which VMs are reset).")
	flag.BoolVar(&c.keepAudit, "keep-audit", false, "Copy kube-apiserver's audit log (writes only) to the results folder.")
	flag.Parse()
	for _, s := range strings.Split(*nList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			log.Fatalf("bench: bad -n %q", s)
		}
		c.ns = append(c.ns, n)
	}
	var err error
	if c.mix, err = parseMix(*policies); err != nil {
		log.Fatalf("bench: %v", err)
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zap.Options{}.Level)))
	if _, err := os.Stat(c.operator); err != nil {
		log.Fatalf("bench: operator binary: %v (run make build)", err)
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		log.Fatal(err)
	}
	var results []result
	for _, n := range c.ns {
		r, err := runOne(c, n)
		if err != nil {
			log.Printf("bench: N=%d: %v", n, err)
			r.Err = err.Error()
		}
		results = append(results, r)
		// Write after every N: a later, larger N may not finish.
		if werr := writeResults(c.out, results); werr != nil {
			log.Printf("bench: writing results: %v", werr)
		}
	}
	fmt.Println(table(results))
}

func parseMix(s string) ([]v1alpha1.RunPolicy, error) {
	var mix []v1alpha1.RunPolicy
	for _, part := range strings.Split(s, ",") {
		name, w, ok := strings.Cut(strings.TrimSpace(part), ":")
		weight := 1
		if ok {
			var err error
			if weight, err = strconv.Atoi(w); err != nil {
				return nil, fmt.Errorf("bad weight in %q", part)
			}
		}
		p := v1alpha1.RunPolicy(name)
		switch p {
		case v1alpha1.RunPolicyAlwaysOff, v1alpha1.RunPolicyAlwaysOn, v1alpha1.RunPolicyManual, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually:
		default:
			return nil, fmt.Errorf("unknown policy %q", name)
		}
		for range weight {
			mix = append(mix, p)
		}
	}
	if len(mix) == 0 {
		return nil, fmt.Errorf("empty policy mix")
	}
	return mix, nil
}

// result is one N's figures. Durations in seconds.
type result struct {
	N                  int
	Err                string `json:",omitempty"`
	CreateSeconds      float64
	ConvergeCreate     float64
	ResyncRestart      float64 // plain operator restart → every VM reconciled once, nothing queued or in flight
	ResyncWrites       int     // the operator's writes in that window: an unchanged VM needs none
	ResyncWritesByKind string  `json:",omitempty"`
	ConvergeRestart    float64 // operator restart with every VM's spec changed while it was down → all converged
	// The operator's writes until then: two per VM are needed (the KubeVirt VM and the VM's status).
	RestartWrites       int
	RestartWritesByKind string  `json:",omitempty"`
	OperatorReadyAfter  float64 // in that restart: operator process start → its first write (cache sync + first reconcile)
	Resets              int
	ResetsTimedOut      int
	ResetP50, ResetP99  float64 // reset → new VMI created
	ResetMax            float64
	FinalToNewP50       float64 // VMI final (seen by a watch) → new VMI created: the operator's share plus KubeVirt's start
	FinalToNewP99       float64
	FinalToStartP50     float64 // VMI final → the operator's start call received by kube-apiserver (audit log)
	FinalToStartP99     float64
	StartToNewP50       float64 // start call → new VMI created (the stand-in's virt-api + virt-controller)
	StartToNewP99       float64
	// The operator's part (VMI final → start call) split at its status write recording the intent (audit log):
	// until that write is received (watch, queue, reconcile), the write itself in kube-apiserver, and from its
	// response to the start call being received.
	FinalToIntentP50, FinalToIntentP99 float64
	IntentWriteP50, IntentWriteP99     float64
	IntentToStartP50, IntentToStartP99 float64
	FloorP50, FloorP99                 float64 // one write's round trip (a ConfigMap patch, the cheapest write)
	// One write of a runpolicy.io VirtualMachine: the kind of write the restart's intent is.
	VMFloorP50, VMFloorP99 float64
	ReconcileMean          float64 // operator's mean reconcile time during the reset stream (its own metric)
	// The operator's writes during the reset stream per reset: all of them, those that are not Events (VM status,
	// KubeVirt calls), and Events (core or events.k8s.io), which only inform.
	WritesPerRestart      float64
	StateWritesPerRestart float64
	EventsPerRestart      float64
	WritesByKind          string
	FailedWrites          int
	FailedWritesBy        map[string]int `json:",omitempty"`
	OperatorPeakRSSMiB    float64
	// Peak RSS of each operator process: the one that saw the VMs created, the one restarted plainly, the one
	// restarted with every spec changed that also ran the reset stream.
	OperatorPeakRSSByRun map[string]float64 `json:",omitempty"`
	OperatorCPUSeconds   map[string]float64 // per phase
	ComponentCPUSeconds  map[string]cpuSnapshot
	APIServerTime        map[string]string // per phase: the request kinds kube-apiserver spent most time serving
}

// run holds one N's live objects.
type run struct {
	cfg      config
	n        int
	env      *cluster.Env
	kv       *kubevirt.StandIn
	cache    cache.Cache
	k8s      client.Client
	auditLog string
	kubecfg  string
	metrics  string
	pprof    string
	op       *exec.Cmd
	opDone   chan struct{}
	hwm      int64
	ns       string

	mu        sync.Mutex
	vmiFinal  map[types.UID]time.Time // when a watch first saw the VMI final
	vmiUIDVM  map[types.UID]string
	runningAt map[types.UID]time.Time
}

func runOne(c config, n int) (res result, err error) {
	res = result{N: n, OperatorCPUSeconds: map[string]float64{}, OperatorPeakRSSByRun: map[string]float64{}, ComponentCPUSeconds: map[string]cpuSnapshot{},
		APIServerTime: map[string]string{}}
	log.Printf("bench: N=%d: starting the cluster", n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "runpolicy-bench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	if c.keepAudit {
		defer func() {
			if b, err := os.ReadFile(filepath.Join(dir, "audit.log")); err == nil {
				_ = os.WriteFile(filepath.Join(c.out, fmt.Sprintf("audit-N%d.log", n)), b, 0o644)
			}
		}()
	}
	args, err := kubevirt.APIServerArgs(dir)
	if err != nil {
		return res, err
	}
	aargs, auditLog, err := auditArgs(dir)
	if err != nil {
		return res, err
	}
	for k, v := range aargs {
		args[k] = v
	}
	env, err := cluster.Start(cluster.Options{APIServerArgs: args, GarbageCollector: true})
	if err != nil {
		return res, err
	}
	defer env.Stop()
	kv, err := kubevirt.Start(ctx, env.Config, kubevirt.Options{CertDir: dir})
	if err != nil {
		return res, err
	}
	defer kv.Stop()
	r := &run{cfg: c, n: n, env: env, kv: kv, k8s: env.Client, auditLog: auditLog, kubecfg: env.Kubeconfig,
		vmiFinal: map[types.UID]time.Time{}, vmiUIDVM: map[types.UID]string{}, runningAt: map[types.UID]time.Time{}}
	if err := r.startCache(ctx); err != nil {
		return res, err
	}
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}
	if err := r.k8s.Create(ctx, nsObj); err != nil {
		return res, err
	}
	r.ns = nsObj.Name
	if err := r.startOperator(); err != nil {
		return res, err
	}
	defer r.stopOperator()

	// 1. Create N VMs; converge.
	api0 := r.apiMetrics(ctx)
	cpu0 := snapshot(r.op.Process.Pid)
	t0 := time.Now()
	if err := r.createVMs(ctx); err != nil {
		return res, err
	}
	res.CreateSeconds = time.Since(t0).Seconds()
	log.Printf("bench: N=%d: created in %.1fs, waiting for convergence", n, res.CreateSeconds)
	if err := r.converge(ctx, "convergence after creation", 1); err != nil {
		return res, fmt.Errorf("converging after creation: %w", err)
	}
	res.ConvergeCreate = time.Since(t0).Seconds()
	cpu1 := snapshot(r.op.Process.Pid)
	res.ComponentCPUSeconds["create"] = cpu1.since(cpu0)
	res.OperatorCPUSeconds["create"] = cpu1["operator"] - cpu0["operator"]
	api1 := r.apiMetrics(ctx)
	res.APIServerTime["create"] = topAPITime(api0, api1, 6)
	log.Printf("bench: N=%d: converged after creation in %.1fs (%s)", n, res.ConvergeCreate, cpu1.since(cpu0))

	// 2. Plain operator restart: stop it, start it again with nothing changed; wait until it has reconciled every
	// VM once. Every VM is already converged, so any write here is one too many.
	res.OperatorPeakRSSByRun["create"] = r.sampleRSS()
	r.stopOperator()
	cpu0 = snapshot(0)
	api0 = r.apiMetrics(ctx)
	t0 = time.Now()
	if err := r.startOperator(); err != nil {
		return res, err
	}
	if err := r.resynced(); err != nil {
		return res, fmt.Errorf("resync after a plain operator restart: %w", err)
	}
	res.ResyncRestart = time.Since(t0).Seconds()
	cpu1 = snapshot(r.op.Process.Pid)
	res.ComponentCPUSeconds["resync"] = cpu1.since(cpu0)
	res.OperatorCPUSeconds["resync"] = cpu1["operator"]
	api1 = r.apiMetrics(ctx)
	res.APIServerTime["resync"] = topAPITime(api0, api1, 6)
	// Events reach kube-apiserver from the recorder's goroutine after the reconcile that emitted them.
	time.Sleep(2 * time.Second)
	wc, err := countWrites(r.auditLog, "runpolicy-controller", t0, time.Now())
	if err != nil {
		return res, err
	}
	res.ResyncWrites, res.ResyncWritesByKind = wc.Total, wc.String()
	log.Printf("bench: N=%d: resynced after a plain operator restart in %.1fs, %d writes (%s)", n, res.ResyncRestart,
		res.ResyncWrites, cpu1.since(cpu0))

	// 3. Operator restart with every VM's spec changed while it was down; converge.
	res.OperatorPeakRSSByRun["resync"] = r.sampleRSS()
	r.stopOperator()
	if err := r.bumpSpecs(ctx); err != nil {
		return res, err
	}
	cpu0 = snapshot(0)
	api0 = r.apiMetrics(ctx)
	t0 = time.Now()
	if err := r.startOperator(); err != nil {
		return res, err
	}
	if err := r.converge(ctx, "convergence after a restart with every spec changed", 2); err != nil {
		return res, fmt.Errorf("converging after the operator restart with every spec changed: %w", err)
	}
	res.ConvergeRestart = time.Since(t0).Seconds()
	if first, ok := r.firstWrite(t0); ok {
		res.OperatorReadyAfter = first.Sub(t0).Seconds()
	}
	cpu1 = snapshot(r.op.Process.Pid)
	res.ComponentCPUSeconds["restart"] = cpu1.since(cpu0)
	res.OperatorCPUSeconds["restart"] = cpu1["operator"]
	api1 = r.apiMetrics(ctx)
	res.APIServerTime["restart"] = topAPITime(api0, api1, 6)
	if wc, err := countWrites(r.auditLog, "runpolicy-controller", t0, time.Now()); err == nil {
		res.RestartWrites, res.RestartWritesByKind = wc.Total, wc.String()
	}
	log.Printf("bench: N=%d: converged after the operator restart with every spec changed in %.1fs, %d operator writes (%s)", n,
		res.ConvergeRestart, res.RestartWrites, cpu1.since(cpu0))

	// The stand-in may still be working through the KubeVirt VMs changed in phase 3 (the operator converged
	// first): let it finish, so the floor and the reset stream measure a quiet system, not that backlog.
	if err := r.standInIdle(); err != nil {
		return res, err
	}

	// 4. The apiserver's floor: one write's round trip, measured now (N VMs in etcd, system quiet).
	res.FloorP50, res.FloorP99, err = r.writeFloor(ctx)
	if err != nil {
		return res, err
	}
	res.VMFloorP50, res.VMFloorP99, err = r.vmWriteFloor(ctx)
	if err != nil {
		return res, err
	}

	// 5. Reset stream.
	rec0, _ := r.scrape()
	cpu0 = snapshot(r.op.Process.Pid)
	api0 = r.apiMetrics(ctx)
	tStream := time.Now()
	lat, f2n, recs, timedOut, err := r.resetStream(ctx)
	if err != nil {
		return res, err
	}
	// Let the last restarts finish their bookkeeping before counting writes.
	_ = r.converge(ctx, "the reset stream's last restarts", 2)
	time.Sleep(2 * time.Second)
	tEnd := time.Now()
	rec1, _ := r.scrape()
	cpu1 = snapshot(r.op.Process.Pid)
	res.ComponentCPUSeconds["resets"] = cpu1.since(cpu0)
	res.OperatorCPUSeconds["resets"] = cpu1["operator"] - cpu0["operator"]
	api1 = r.apiMetrics(ctx)
	res.APIServerTime["resets"] = topAPITime(api0, api1, 6)
	res.Resets, res.ResetsTimedOut = len(lat), timedOut
	res.ResetP50, res.ResetP99, res.ResetMax = pct(lat, 50), pct(lat, 99), pct(lat, 100)
	res.FinalToNewP50, res.FinalToNewP99 = pct(f2n, 50), pct(f2n, 99)
	if calls, err := restartCalls(r.auditLog, "runpolicy-controller"); err == nil {
		var f2s, s2n, f2i, iw, i2s []float64
		for _, rc := range recs {
			c := calls[rc.name]
			if c == nil {
				continue
			}
			start, ok := c.startAfter(rc.final, rc.created)
			if !ok {
				continue
			}
			f2s = append(f2s, start.Received.Sub(rc.final).Seconds())
			s2n = append(s2n, rc.created.Sub(start.Received).Seconds())
			if intent, ok := c.intentBefore(rc.final, start.Received); ok {
				f2i = append(f2i, intent.Received.Sub(rc.final).Seconds())
				iw = append(iw, intent.Done.Sub(intent.Received).Seconds())
				i2s = append(i2s, start.Received.Sub(intent.Done).Seconds())
			}
		}
		res.FinalToStartP50, res.FinalToStartP99 = pct(f2s, 50), pct(f2s, 99)
		res.StartToNewP50, res.StartToNewP99 = pct(s2n, 50), pct(s2n, 99)
		res.FinalToIntentP50, res.FinalToIntentP99 = pct(f2i, 50), pct(f2i, 99)
		res.IntentWriteP50, res.IntentWriteP99 = pct(iw, 50), pct(iw, 99)
		res.IntentToStartP50, res.IntentToStartP99 = pct(i2s, 50), pct(i2s, 99)
	}
	if dc := rec1.reconcileCount - rec0.reconcileCount; dc > 0 {
		res.ReconcileMean = (rec1.reconcileSum - rec0.reconcileSum) / dc
	}
	wc, err = countWrites(r.auditLog, "runpolicy-controller", tStream, tEnd)
	if err != nil {
		return res, err
	}
	if len(lat) > 0 {
		res.WritesPerRestart = float64(wc.Total) / float64(len(lat))
		res.StateWritesPerRestart = float64(wc.Total-wc.Events) / float64(len(lat))
		res.EventsPerRestart = float64(wc.Events) / float64(len(lat))
	}
	res.WritesByKind, res.FailedWrites, res.FailedWritesBy = wc.String(), wc.Failed, wc.FailedBy
	res.OperatorPeakRSSByRun["restart+resets"] = r.sampleRSS()
	res.OperatorPeakRSSMiB = float64(r.hwm) / 1024
	if err := r.heapProfile(); err != nil {
		log.Printf("bench: N=%d: heap profile: %v", n, err)
	}
	log.Printf("bench: N=%d: %d resets, p50 %.0fms p99 %.0fms; floor p50 %.1fms; %.2f writes/restart, %.2f of them Events (%s)",
		n, len(lat), res.ResetP50*1000, res.ResetP99*1000, res.FloorP50*1000, res.WritesPerRestart, res.EventsPerRestart,
		res.WritesByKind)
	return res, nil
}

func (r *run) startCache(ctx context.Context) error {
	c, err := cache.New(r.env.Config, cache.Options{Scheme: r.env.Scheme})
	if err != nil {
		return err
	}
	inf, err := c.GetInformer(ctx, &kvv1.VirtualMachineInstance{})
	if err != nil {
		return err
	}
	see := func(obj any) {
		vmi, ok := obj.(*kvv1.VirtualMachineInstance)
		if !ok {
			return
		}
		now := time.Now()
		r.mu.Lock()
		defer r.mu.Unlock()
		r.vmiUIDVM[vmi.UID] = vmi.Name
		if vmi.IsFinal() {
			if _, seen := r.vmiFinal[vmi.UID]; !seen {
				r.vmiFinal[vmi.UID] = now
			}
		}
		if vmi.Status.Phase == kvv1.Running {
			if _, seen := r.runningAt[vmi.UID]; !seen {
				r.runningAt[vmi.UID] = now
			}
		}
	}
	if _, err := inf.AddEventHandler(handler{see}); err != nil {
		return err
	}
	if _, err := c.GetInformer(ctx, &v1alpha1.VirtualMachine{}); err != nil {
		return err
	}
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		return fmt.Errorf("bench cache did not sync")
	}
	r.cache = c
	return nil
}

type handler struct{ f func(any) }

func (h handler) OnAdd(obj any, _ bool) { h.f(obj) }
func (h handler) OnUpdate(_, obj any)   { h.f(obj) }
func (h handler) OnDelete(any)          {}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

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
		"--metrics-bind-address", r.metrics, "--health-probe-bind-address", "0", "--pprof-bind-address", r.pprof,
		"--hook-sidecar-image", "registry.example/runpolicy/hook-sidecar:bench",
		"--restart-backoff-base", "1s", "--restart-backoff-max", "4s")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	r.op, r.opDone = cmd, done
	return nil
}

// sampleRSS records the running operator's peak RSS (VmHWM) and returns it in MiB.
func (r *run) sampleRSS() float64 {
	if r.op == nil || r.op.Process == nil {
		return 0
	}
	hwm, _, err := memKiB(r.op.Process.Pid)
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
	defer resp.Body.Close()
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

func (r *run) vmName(i int) string { return fmt.Sprintf("vm-%05d", i) }

func (r *run) policyOf(i int) v1alpha1.RunPolicy { return r.cfg.mix[i%len(r.cfg.mix)] }

// parallel runs f(0..n-1) on cfg.workers goroutines; the first error wins.
func (r *run) parallel(n int, f func(i int) error) error {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range r.cfg.workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

func (r *run) createVMs(ctx context.Context) error {
	return r.parallel(r.n, func(i int) error {
		return r.k8s.Create(ctx, fixture.VM(r.ns, r.vmName(i), r.policyOf(i)))
	})
}

// bumpSpecs changes every VM's template (an annotation), so each needs a reconcile: generation rev.
func (r *run) bumpSpecs(ctx context.Context) error {
	return r.parallel(r.n, func(i int) error {
		patch := []byte(`{"spec":{"template":{"metadata":{"annotations":{"bench.runpolicy.io/rev":"2"}}}}}`)
		obj := &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: r.ns, Name: r.vmName(i)}}
		return r.k8s.Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch))
	})
}

// waitFor polls done every 100ms until it reports true, for at most -phase-timeout, logging its progress report
// every 15s with what is awaited; it gives up early if the operator process ends.
func (r *run) waitFor(what string, done func() (bool, string, error)) error {
	deadline := time.Now().Add(r.cfg.phaseLimit)
	lastLog := time.Now()
	for {
		ok, progress, err := done()
		if err != nil || ok {
			return err
		}
		select {
		case <-r.opDone:
			return fmt.Errorf("the operator exited: %s", progress)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s after %s", progress, r.cfg.phaseLimit)
		}
		if time.Since(lastLog) > 15*time.Second {
			log.Printf("bench: N=%d: waiting for %s: %s", r.n, what, progress)
			lastLog = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// converge waits until every VM reports its current generation, and the phase its policy demands when nothing else
// happened (AlwaysOn and AlwaysOnUntilStoppedManually Running and Ready, Manual and AlwaysOff Stopped).
func (r *run) converge(ctx context.Context, what string, generation int64) error {
	return r.waitFor(what, func() (bool, string, error) {
		list := &v1alpha1.VirtualMachineList{}
		if err := r.cache.List(ctx, list, client.InNamespace(r.ns), client.UnsafeDisableDeepCopy); err != nil {
			return false, "", err
		}
		done := 0
		for i := range list.Items {
			vm := &list.Items[i]
			if vm.Generation < generation || vm.Status.ObservedGeneration != vm.Generation {
				continue
			}
			want := v1alpha1.VirtualMachineStopped
			if vm.Spec.RunPolicy == v1alpha1.RunPolicyAlwaysOn || vm.Spec.RunPolicy == v1alpha1.RunPolicyAlwaysOnUntilStoppedManually {
				want = v1alpha1.VirtualMachineRunning
			}
			if vm.Status.Phase == want {
				done++
			}
		}
		return done == r.n, fmt.Sprintf("%d/%d VMs converged", done, r.n), nil
	})
}

// standInIdle waits until the KubeVirt stand-in's controllers (in this process) have nothing queued or running
// for a second.
func (r *run) standInIdle() error {
	var quietSince time.Time
	return r.waitFor("the KubeVirt stand-in to go idle", func() (bool, string, error) {
		families, err := crmetrics.Registry.Gather()
		if err != nil {
			return false, "", err
		}
		busy := 0.0
		for _, f := range families {
			if f.GetName() != "workqueue_depth" && f.GetName() != "controller_runtime_active_workers" {
				continue
			}
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if (l.GetName() == "name" || l.GetName() == "controller") && strings.HasPrefix(l.GetValue(), "kubevirt-standin") {
						busy += m.GetGauge().GetValue()
					}
				}
			}
		}
		if busy > 0 {
			quietSince = time.Time{}
		} else if quietSince.IsZero() {
			quietSince = time.Now()
		}
		return !quietSince.IsZero() && time.Since(quietSince) >= time.Second, fmt.Sprintf("%.0f queued or running", busy), nil
	})
}

// resynced waits until a freshly started operator has reconciled every VM once: its virtualmachine controller
// counted N reconciles (its cache sync queues every VM; a new process counts from 0), with none queued or running.
// The VMs' status cannot tell: a resync of a converged VM changes nothing.
func (r *run) resynced() error {
	return r.waitFor("the resync after a plain operator restart", func() (bool, string, error) {
		m, err := r.scrape()
		if err != nil {
			return false, fmt.Sprintf("operator metrics: %v", err), nil // not serving yet
		}
		return m.reconciles >= float64(r.n) && m.queueDepth == 0 && m.activeWorkers == 0,
			fmt.Sprintf("%.0f/%d reconciles, %.0f queued, %.0f running", m.reconciles, r.n, m.queueDepth, m.activeWorkers), nil
	})
}

// firstWrite finds the operator's first write after t in the audit log.
func (r *run) firstWrite(t time.Time) (time.Time, bool) {
	f, err := os.ReadFile(r.auditLog)
	if err != nil {
		return time.Time{}, false
	}
	var first time.Time
	for _, line := range strings.Split(string(f), "\n") {
		var ev auditEvent
		if json.Unmarshal([]byte(line), &ev) != nil || !strings.HasPrefix(ev.UserAgent, "runpolicy-controller") {
			continue
		}
		if ev.RequestReceived.After(t) && (first.IsZero() || ev.RequestReceived.Before(first)) {
			first = ev.RequestReceived
		}
	}
	return first, !first.IsZero()
}

// writeFloor measures floorN sequential writes (a ConfigMap annotation patch) by an admin client: the cheapest
// write kube-apiserver serves.
func (r *run) writeFloor(ctx context.Context) (p50, p99 float64, err error) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: r.ns, Name: "bench-floor"}}
	if err := r.k8s.Create(ctx, cm); err != nil {
		return 0, 0, err
	}
	return r.patchLatency(ctx, cm)
}

// vmWriteFloor measures floorN sequential writes of a runpolicy.io VirtualMachine (an annotation patch, which goes
// through the same decoding, schema validation and field management as the operator's status writes), on an
// AlwaysOff VM in a namespace of its own so that it counts nowhere else.
func (r *run) vmWriteFloor(ctx context.Context) (p50, p99 float64, err error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.ns + "-floor"}}
	if err := r.k8s.Create(ctx, ns); err != nil {
		return 0, 0, err
	}
	vm := fixture.VM(ns.Name, "floor", v1alpha1.RunPolicyAlwaysOff)
	if err := r.k8s.Create(ctx, vm); err != nil {
		return 0, 0, err
	}
	// Let the operator create its KubeVirt VM and write its status first: the patches below change nothing it
	// reads, so its passes on them make no write.
	if err := r.waitFor("the write-floor VM to converge", func() (bool, string, error) {
		got := &v1alpha1.VirtualMachine{}
		if err := r.k8s.Get(ctx, client.ObjectKeyFromObject(vm), got); err != nil {
			return false, "", err
		}
		return got.Status.ObservedGeneration == got.Generation && got.Status.Phase == v1alpha1.VirtualMachineStopped,
			string(got.Status.Phase), nil
	}); err != nil {
		return 0, 0, err
	}
	return r.patchLatency(ctx, vm)
}

// patchLatency times floorN sequential annotation merge patches of obj.
func (r *run) patchLatency(ctx context.Context, obj client.Object) (p50, p99 float64, err error) {
	var lat []float64
	for i := range r.cfg.floorN {
		patch := fmt.Appendf(nil, `{"metadata":{"annotations":{"bench.runpolicy.io/i":"%d"}}}`, i)
		t := time.Now()
		if err := r.k8s.Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch)); err != nil {
			return 0, 0, err
		}
		lat = append(lat, time.Since(t).Seconds())
	}
	return pct(lat, 50), pct(lat, 99), nil
}

// apiMetrics scrapes kube-apiserver's /metrics with the admin client.
func (r *run) apiMetrics(ctx context.Context) map[string][2]float64 {
	cs, err := kubernetes.NewForConfig(r.env.Config)
	if err != nil {
		return nil
	}
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		log.Printf("bench: scraping kube-apiserver metrics: %v", err)
		return nil
	}
	return apiserverTime(raw)
}

// opMetrics are the operator's figures for its virtualmachine controller.
type opMetrics struct {
	reconcileSum, reconcileCount float64 // controller_runtime_reconcile_time_seconds
	reconciles                   float64 // controller_runtime_reconcile_total, every result
	queueDepth                   float64 // workqueue_depth, every priority
	activeWorkers                float64 // controller_runtime_active_workers
}

// scrape reads the operator's metrics of the virtualmachine controller.
func (r *run) scrape() (opMetrics, error) {
	var m opMetrics
	// Bounded, so that a stuck operator cannot hold a phase past -phase-timeout.
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + r.metrics + "/metrics")
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return m, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		name, labels, v, ok := parseSample(line)
		if !ok {
			continue
		}
		if name == "workqueue_depth" {
			if labels["name"] == "virtualmachine" {
				m.queueDepth += v
			}
			continue
		}
		if labels["controller"] != "virtualmachine" {
			continue
		}
		switch name {
		case "controller_runtime_reconcile_time_seconds_sum":
			m.reconcileSum = v
		case "controller_runtime_reconcile_time_seconds_count":
			m.reconcileCount = v
		case "controller_runtime_reconcile_total":
			m.reconciles += v
		case "controller_runtime_active_workers":
			m.activeWorkers = v
		}
	}
	return m, nil
}

// parseSample splits one line of the Prometheus text format, name{labels} value, without a timestamp.
func parseSample(line string) (name string, labels map[string]string, v float64, ok bool) {
	i := strings.LastIndexByte(line, ' ')
	if i < 0 || strings.HasPrefix(line, "#") {
		return "", nil, 0, false
	}
	series := line[:i]
	v, err := strconv.ParseFloat(line[i+1:], 64)
	if err != nil {
		return "", nil, 0, false
	}
	name, lb, _ := strings.Cut(strings.TrimSuffix(series, "}"), "{")
	labels = map[string]string{}
	for _, kv := range strings.Split(lb, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			labels[k] = strings.Trim(v, `"`)
		}
	}
	return name, labels, v, true
}

// resetStream reboots the guests of running AlwaysOnUntilStoppedManually VMs, cfg.resetRate per second, and
// measures, per reset, reset → new VMI created (the stand-in's record) and VMI final → new VMI.
type resetRecord struct {
	name           string
	final, created time.Time
}

func (r *run) resetStream(ctx context.Context) (lat, finalToNew []float64, recs []resetRecord, timedOut int, err error) {
	var pool []string
	for i := range r.n {
		if r.policyOf(i) == v1alpha1.RunPolicyAlwaysOnUntilStoppedManually {
			pool = append(pool, r.vmName(i))
		}
	}
	if len(pool) == 0 || r.cfg.resets == 0 {
		return nil, nil, nil, 0, nil
	}
	rng := rand.New(rand.NewPCG(r.cfg.seed, uint64(r.n)))
	var mu sync.Mutex
	busy := map[string]bool{}
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Duration(float64(time.Second) / r.cfg.resetRate))
	defer tick.Stop()
	deadline := time.Now().Add(r.cfg.phaseLimit)
	lastLog := time.Now()
	started := 0
	for started < r.cfg.resets && time.Now().Before(deadline) {
		<-tick.C
		if time.Since(lastLog) > 15*time.Second {
			mu.Lock()
			log.Printf("bench: N=%d: waiting for the reset stream: %d/%d resets started, %d new VMIs, %d timed out",
				r.n, started, r.cfg.resets, len(lat), timedOut)
			mu.Unlock()
			lastLog = time.Now()
		}
		mu.Lock()
		var free []string
		for _, name := range pool {
			if !busy[name] {
				free = append(free, name)
			}
		}
		if len(free) == 0 {
			mu.Unlock()
			continue
		}
		name := free[rng.IntN(len(free))]
		busy[name] = true
		mu.Unlock()
		started++
		wg.Go(func() {
			defer func() { mu.Lock(); delete(busy, name); mu.Unlock() }()
			before := r.kv.VMIUIDs(r.ns, name)
			if len(before) == 0 {
				return
			}
			old := before[len(before)-1]
			if err := r.kv.GuestReboot(ctx, r.ns, name); err != nil {
				log.Printf("bench: reset %s: %v", name, err)
				return
			}
			t0 := time.Now()
			// A reset is given 2 minutes, but none beyond the phase's deadline.
			limit := t0.Add(2 * time.Minute)
			if limit.After(deadline) {
				limit = deadline
			}
			for {
				uids := r.kv.VMIUIDs(r.ns, name)
				if len(uids) > len(before) {
					t1 := time.Now()
					newUID := uids[len(before)]
					r.mu.Lock()
					fin, ok := r.vmiFinal[old]
					r.mu.Unlock()
					mu.Lock()
					lat = append(lat, t1.Sub(t0).Seconds())
					if ok {
						finalToNew = append(finalToNew, t1.Sub(fin).Seconds())
						recs = append(recs, resetRecord{name: name, final: fin, created: t1})
					}
					mu.Unlock()
					// Keep the VM busy until its new VMI runs, so the next reset hits a running guest.
					for time.Now().Before(limit) {
						r.mu.Lock()
						_, running := r.runningAt[newUID]
						r.mu.Unlock()
						if running {
							break
						}
						time.Sleep(20 * time.Millisecond)
					}
					return
				}
				if time.Now().After(limit) {
					mu.Lock()
					timedOut++
					mu.Unlock()
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	if started < r.cfg.resets {
		log.Printf("bench: N=%d: reset stream: only %d of %d resets started within %s", r.n, started, r.cfg.resets, r.cfg.phaseLimit)
	}
	return lat, finalToNew, recs, timedOut, nil
}

// pct returns the p-th percentile (nearest rank) of xs; 0 for none.
func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}
