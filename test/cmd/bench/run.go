package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/kubevirt"
)

// hookSidecarImage is the operator's --hook-sidecar-image; the node layer's sidecar container running it reports
// the guest's SHUTDOWN events. The baseline VMs carry the same sidecar.
const hookSidecarImage = "registry.example/runpolicy/hook-sidecar:bench"

// run holds one N's live objects.
type run struct {
	ctx      context.Context // cancelled by an interrupt
	cfg      config
	n        int
	res      *result
	env      *cluster.Env
	node     *kubevirt.Node
	cache    cache.Cache
	k8s      client.Client
	auditLog string
	kubecfg  string
	metrics  string
	pprof    string
	op       *exec.Cmd
	opDone   chan struct{}
	hwm      int64
	ns       string // runpolicy's VMs
	kvNS     string // the baseline's kubevirt.io VMs

	// lastKubeVirtEvent is when the bench's watch last saw a KubeVirt VM or VMI change (UnixNano).
	lastKubeVirtEvent atomic.Int64

	mu        sync.Mutex
	vmiFinal  map[types.UID]time.Time // when a watch first saw the VMI final
	runningAt map[types.UID]time.Time // when a watch first saw the VMI Running
}

func runOne(parent context.Context, c config, n int) (res result, err error) {
	res = result{N: n, RestartRequest: c.restartRequest, OperatorCPUSeconds: map[string]float64{}, OperatorPeakRSSByRun: map[string]float64{},
		ComponentCPUSeconds: map[string]cpuSnapshot{}, APIServerTime: map[string]string{}, PhaseSeconds: map[string]float64{}}
	log.Printf("bench: N=%d: starting the cluster (KubeVirt %s)", n, cluster.KubeVirtVersion())
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	env, err := cluster.Start(cluster.Options{GarbageCollector: true, AuditPolicy: auditPolicy,
		KubeVirt: &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}}})
	if err != nil {
		return res, err
	}
	defer func() { _ = env.Stop() }()
	// The logs of virt-api, virt-controller and kube-controller-manager go to the results folder.
	defer func() {
		for _, l := range env.Logs() {
			if b, err := os.ReadFile(l); err == nil {
				_ = os.WriteFile(filepath.Join(c.out, fmt.Sprintf("%s-N%d.log", strings.TrimSuffix(filepath.Base(l), ".log"), n)), b, 0o644)
			}
		}
	}()
	if c.keepAudit {
		defer func() {
			if b, err := os.ReadFile(env.AuditLog); err == nil {
				_ = os.WriteFile(filepath.Join(c.out, fmt.Sprintf("audit-N%d.log", n)), b, 0o644)
			}
		}()
	}
	node, err := kubevirt.Start(ctx, env.Config, kubevirt.Options{AuditLog: env.AuditLog, HookSidecarImage: hookSidecarImage})
	if err != nil {
		return res, err
	}
	defer func() { _ = node.Stop() }()
	r := &run{ctx: ctx, cfg: c, n: n, res: &res, env: env, node: node, k8s: env.Client, auditLog: env.AuditLog, kubecfg: env.Kubeconfig,
		vmiFinal: map[types.UID]time.Time{}, runningAt: map[types.UID]time.Time{}}
	if err := r.startCache(ctx); err != nil {
		return res, err
	}
	for _, ns := range []*string{&r.ns, &r.kvNS} {
		name := "bench"
		if ns == &r.kvNS {
			name = "bench-kubevirt"
		}
		if err := r.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
			return res, err
		}
		*ns = name
	}
	if c.plain {
		if err := r.plainCreatePhase(ctx); err != nil {
			return res, err
		}
	}
	if err := r.startOperator(); err != nil {
		return res, err
	}
	defer r.stopOperator()

	if err := r.createPhase(ctx); err != nil {
		return res, err
	}
	if err := r.resyncPhase(ctx); err != nil {
		return res, err
	}
	if err := r.restartPhase(ctx); err != nil {
		return res, err
	}
	if err := r.createBaseline(ctx); err != nil {
		return res, fmt.Errorf("KubeVirt's baseline VMs: %w", err)
	}
	// KubeVirt may still be working through the KubeVirt VMs changed in the restart phase (the operator converged
	// first): let it finish, so the floor and the reset stream measure a quiet system, not that backlog.
	if err := r.kubeVirtIdle(); err != nil {
		return res, err
	}
	if err := r.floorPhase(ctx); err != nil {
		return res, err
	}
	if err := r.resetPhase(ctx); err != nil {
		return res, err
	}
	res.OperatorPeakRSSByRun["restart+resets"] = r.sampleRSS()
	res.OperatorPeakRSSMiB = float64(r.hwm) / 1024
	if err := r.heapProfile(); err != nil {
		log.Printf("bench: N=%d: heap profile: %v", n, err)
	}
	kb := res.KubeVirt
	log.Printf("bench: N=%d: reset → new VMI p50/p99: runpolicy %.0f/%.0f ms (%d resets), KubeVirt Always %.0f/%.0f ms (%d resets); "+
		"floor p50 %.1fms; %.2f writes/restart, %.2f of them Events (%s)",
		n, res.ResetP50*1000, res.ResetP99*1000, res.Resets, kb.ResetP50*1000, kb.ResetP99*1000, kb.Resets,
		res.FloorP50*1000, res.WritesPerRestart, res.EventsPerRestart, res.WritesByKind)
	return res, nil
}

// startCache watches VMIs (when each was first seen final and Running), KubeVirt VMs (when KubeVirt last changed
// anything) and runpolicy's VMs (convergence).
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
		r.lastKubeVirtEvent.Store(time.Now().UnixNano())
		vmi, ok := obj.(*kvv1.VirtualMachineInstance)
		if !ok {
			return
		}
		now := time.Now()
		r.mu.Lock()
		defer r.mu.Unlock()
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
	if _, err := inf.AddEventHandler(handler{see, func(any) { r.lastKubeVirtEvent.Store(time.Now().UnixNano()) }}); err != nil {
		return err
	}
	vms, err := c.GetInformer(ctx, &kvv1.VirtualMachine{})
	if err != nil {
		return err
	}
	touch := func(any) { r.lastKubeVirtEvent.Store(time.Now().UnixNano()) }
	if _, err := vms.AddEventHandler(handler{touch, touch}); err != nil {
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

// seen returns when a watch first saw the VMI final and Running.
func (r *run) seen(uid types.UID) (final, running time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.vmiFinal[uid], r.runningAt[uid]
}

// handler calls f for an added or updated object, del for a deleted one.
type handler struct{ f, del func(any) }

func (h handler) OnAdd(obj any, _ bool) { h.f(obj) }
func (h handler) OnUpdate(_, obj any)   { h.f(obj) }
func (h handler) OnDelete(obj any)      { h.del(obj) }
