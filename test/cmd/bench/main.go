// Command bench measures runpolicy at scale on the offline test cluster — real kube-apiserver, etcd and
// kube-controller-manager, KubeVirt's real virt-api and virt-controller (Sidecar gate on), the simulated node of
// test/kubevirt — with the real operator binary as a child process (so its RSS and CPU are its own), and KubeVirt's
// own restart (runStrategy Always) as the baseline in the same run:
//
//   - time for N VMs to converge after creation (create.go), next to the time for the same N VMs created as
//     kubevirt.io VMs directly (what runpolicy applies), measured before the operator starts (plain.go);
//   - time for a plain operator restart (nothing changed) to reconcile every VM once, and the writes it makes
//     (there should be none), and time to converge after an operator restart with every VM's spec changed while it
//     was down, so every VM needs a write (restart.go);
//   - the apiserver's round trip for one write (the floor: a ConfigMap patch, and a patch of a runpolicy.io
//     VirtualMachine, the kind of object the operator writes) (floor.go);
//   - a stream of guest resets (resets.go) alternating between running AlwaysOnUntilStoppedManually VMs, which
//     runpolicy restarts through KubeVirt's start, and kubevirt.io VMs with runStrategy Always in a namespace of
//     their own (baseline.go), which KubeVirt restarts by itself; the node layer ends both the same way (the
//     guest reset's SHUTDOWN events in the hook sidecar's termination message, pod and VMI Succeeded). Per kind:
//     reset → new VMI created and → new VMI Running, p50/p99, and runpolicy/KubeVirt ratios; for runpolicy also the
//     operator's part (VMI final → its start call, split at its status write, from the audit log), its mean
//     reconcile time and its API writes per restart (audit log, by user agent, Events apart);
//   - operator peak RSS (VmHWM, per operator process) and CPU, the CPU of every other component (virt-api and
//     virt-controller included), the request kinds kube-apiserver spent its time on per phase (measure.go), and
//     the operator's heap profile at the end (heap-N<n>.pprof).
//
// It prints a table and writes it, a JSON file and a PNG plot (latency vs N) under -out. Nothing is asserted.
//
// With -hostile-templates (hostile.go) or -memory (memory.go) it measures instead the operator's peak RSS against
// the chart's memory limit while users store large templates, or large annotations, in their VMs.
//
//	go run ./test/cmd/bench -n 100,1000 -resets 200
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/cluster"
)

type config struct {
	ns          []int
	mix         []v1alpha1.RunPolicy // cycled over the VMs
	resets      int
	resetRate   float64
	baselineVMs int
	out         string
	operator    string
	phaseLimit  time.Duration
	workers     int
	floorN      int
	seed        uint64
	keepAudit   bool
	plain       bool
	// restartRequest is the operator's --restart-request.
	restartRequest string
}

func main() {
	var c config
	nList := flag.String("n", "100,1000,5000", "Comma-separated VM counts, one run (fresh cluster) each.")
	policies := flag.String("policies", "AlwaysOnUntilStoppedManually:2,AlwaysOn:1,Manual:1",
		"Policy mix, Policy:weight,... (AlwaysOff, AlwaysOn, Manual, AlwaysOnUntilStoppedManually).")
	flag.IntVar(&c.resets, "resets", 200, "Guest resets of each kind in the reset stream: runpolicy (running AlwaysOnUntilStoppedManually "+
		"VMs) and KubeVirt's baseline (runStrategy Always VMs).")
	flag.Float64Var(&c.resetRate, "reset-rate", 10, "Guest resets of each kind started per second (the two kinds alternate).")
	flag.IntVar(&c.baselineVMs, "baseline-vms", 50, "kubevirt.io VMs with runStrategy Always for KubeVirt's baseline (at most N).")
	flag.StringVar(&c.out, "out", filepath.Join(cluster.RepoRoot(), "test", "results"), "Results folder.")
	flag.StringVar(&c.operator, "operator", filepath.Join(cluster.RepoRoot(), "bin", "runpolicy-controller"), "Operator binary (make build).")
	flag.DurationVar(&c.phaseLimit, "phase-timeout", 10*time.Minute, "Give up on a phase (convergence, resets) after this long.")
	flag.IntVar(&c.workers, "workers", 8, "Concurrent clients creating/updating VMs.")
	flag.IntVar(&c.floorN, "floor-writes", 200, "Sequential writes measuring the apiserver's round trip.")
	flag.Uint64Var(&c.seed, "seed", 1, "Random seed (which VMs are reset).")
	flag.StringVar(&c.restartRequest, "restart-request", "state-change-request", "The operator's --restart-request: state-change-request or start-subresource.")
	flag.BoolVar(&c.keepAudit, "keep-audit", false, "Copy kube-apiserver's audit log (writes only) to the results folder.")
	flag.BoolVar(&c.plain, "plain", true, "Before the operator starts, create the same N VMs as kubevirt.io VMs (what runpolicy applies) "+
		"and time them to converge, next to the runpolicy VMs' creation (plain.go).")
	hostile := flag.Int("hostile-templates", 0, "Instead of the scale runs: peak RSS of the operator with this many runpolicy VMs "+
		"whose templates are -hostile-size bytes, next to the same VMs with one-line templates (issue: memory under hostile input).")
	hostileSize := flag.Int("hostile-size", 1400*1000, "Template size for -hostile-templates and -memory.")
	memory := flag.Int("memory", 0, "Instead of the scale runs: peak RSS of the operator, next to the chart's memory limit, with this many "+
		"runpolicy VMs carrying -memory-annotations bytes of annotations each, with as many whose templates are -hostile-size bytes, "+
		"and with one-line templates; each while the VMs are created and for a new operator starting with all of them present, its "+
		"initial list streamed and not (issue 23: memory bounded whatever users store).")
	memoryAnnotations := flag.Int("memory-annotations", 254<<10, "Bytes of annotations on each VM for -memory (kube-apiserver allows 256 KiB).")
	flag.Parse()
	if *memory > 0 {
		ctrl.SetLogger(logr.Discard())
		if err := memoryScenario(context.Background(), c.operator, *memory, *memoryAnnotations, *hostileSize); err != nil {
			log.Fatalf("bench: %v", err)
		}
		return
	}
	if *hostile > 0 {
		if err := hostileTemplates(context.Background(), c.operator, *hostile, *hostileSize); err != nil {
			log.Fatalf("bench: %v", err)
		}
		return
	}
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
	// The node layer's controllers log every write conflict, which are routine here; the bench reports itself.
	ctrl.SetLogger(logr.Discard())
	if _, err := os.Stat(c.operator); err != nil {
		log.Fatalf("bench: operator binary: %v (run make build)", err)
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		log.Fatal(err)
	}
	// An interrupt ends the current phase; the cluster and the operator are stopped on the way out.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var results []result
	for _, n := range c.ns {
		if ctx.Err() != nil {
			break
		}
		r, err := runOne(ctx, c, n)
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
