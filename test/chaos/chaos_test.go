//go:build chaos

// Package chaos drives the whole operator (in-process manager, restarted like a crashed pod) with a long random
// sequence of guest reboots, poweroffs and crashes, VirtualMachineOperations, policy changes, operator kills at
// random points and conflict storms over 50 VMs, on the offline test cluster with KubeVirt's real virt-api and
// virt-controller (Sidecar gate on) and the simulated node (test/kubevirt), then checks the end state against a
// model of what each VM's policy and event history demand. The operator runs as the Helm chart installs it
// (test/chartrbac): its ServiceAccount's token under the chart's RBAC and admission policies, with the chart's
// Deployment args.
//
//	make chaos                       # CHAOS_SEED=1 CHAOS_EVENTS=1000 CHAOS_MAX_STARTS=0
//	go test -tags chaos ./test/chaos/ -count=1 -v -args -seed=7 -events=300
//
// Each VM-targeted event is applied to a VM that has settled (its state matches the model and it has no
// operation in flight), so each VM's history is sequential and its expected state and VMI count are exact,
// while the other VMs, the operator kills and the conflict storms keep running concurrently. The seed fixes the
// policies and the sequence of event kinds and parameters; which settled VM an event lands on, and where a
// kill falls, also depend on timing, so two runs with one seed are alike but not identical.
//
// Checked at the end: every VM is in the state (Running/Stopped, Ready, no VMI left when stopped) its policy
// and history demand; KubeVirt created exactly as many VMIs per VM as the history demands (so no reset, crash,
// start or restart was acted on twice, or not at all); no KubeVirt VirtualMachine was deleted (a watch counts
// deletions, and each keeps its UID), and no DataVolume either (every other VM has one, created by real
// virt-controller from its dataVolumeTemplates and provisioned by the node layer's CDI part).
//
// The model is KubeVirt's as the real virt-controller acts, which differs from the stand-in this test first ran
// on in ways the events here do not reach: its crash-loop backoff under runStrategy Always (10·n² s, plus
// jitter, up to 5 min) counts only VMIs that failed before they ever ran (vm.go syncStartFailureStatus), and
// every crash here hits a Running guest, so an AlwaysOn VM is back at once after each. Under Manual, KubeVirt
// leaves a final VMI in place until the next start; the operator deletes it once it decided the VM stays
// stopped, so "no VMI left when stopped" holds for every policy.
package chaos

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/internal/lifecycle"
	"github.com/runpolicy/runpolicy/test/chartrbac"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/fault"
	"github.com/runpolicy/runpolicy/test/fixture"
	kvnode "github.com/runpolicy/runpolicy/test/kubevirt"
)

var (
	seedFlag   = flag.Uint64("seed", envUint("CHAOS_SEED", 1), "Random seed (CHAOS_SEED).")
	eventsFlag = flag.Int("events", int(envUint("CHAOS_EVENTS", 1000)), "Number of random events (CHAOS_EVENTS).")
	vmsFlag    = flag.Int("vms", 50, "Number of VMs.")
	settleFlag = flag.Duration("settle", 3*time.Minute, "How long the end state may take to settle.")
	// Under a cap on starts every AlwaysOn VM runs on runStrategy Manual and runpolicy makes its restarts.
	maxStartsFlag = flag.Int("max-starts", int(envUint("CHAOS_MAX_STARTS", 0)),
		"The chart's maxConcurrentStarts (CHAOS_MAX_STARTS); 0: no cap.")
)

func envUint(k string, def uint64) uint64 {
	if v, err := strconv.ParseUint(os.Getenv(k), 10, 64); err == nil && v > 0 {
		return v
	}
	return def
}

// hookSidecarImage is the operator's sidecar image; the node layer's container running it reports the guest's
// SHUTDOWN events.
const hookSidecarImage = "registry.example/runpolicy/hook-sidecar:chaos"

var policies = []v1alpha1.RunPolicy{v1alpha1.RunPolicyAlwaysOff, v1alpha1.RunPolicyAlwaysOn, v1alpha1.RunPolicyManual,
	v1alpha1.RunPolicyAlwaysOnUntilStoppedManually}

// model is what a VM's policy and history demand.
type model struct {
	policy  v1alpha1.RunPolicy
	running bool
	// vmis is how many VMIs KubeVirt must have created for the VM so far.
	vmis int
	// resets counts the guest reboots the VM went through.
	resets int
}

type world struct {
	t     *testing.T
	ctx   context.Context
	env   *cluster.Env
	k8s   client.Client
	node  *kvnode.Node
	cache cache.Cache
	ns    string
	op    *operator
	kill  *killer

	mu     sync.Mutex
	models map[string]*model
	counts map[string]int
	kvUIDs map[string]types.UID
	dvUIDs map[string]types.UID // per VM that has a DataVolume

	kvVMDeletes atomic.Int64
	dvDeletes   atomic.Int64
	conflicts   atomic.Int64
	stormWrites atomic.Int64
}

func (w *world) count(k string) {
	w.mu.Lock()
	w.counts[k]++
	w.mu.Unlock()
}

func TestChaos(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seed, nEvents, nVMs := *seedFlag, *eventsFlag, *vmsFlag
	t.Logf("chaos: seed %d, %d events, %d VMs, at most %d starting at once (0: no cap)", seed, nEvents, nVMs, *maxStartsFlag)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))

	env, err := cluster.Start(cluster.Options{GarbageCollector: true,
		KubeVirt: &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}}})
	must(t, err)
	// The operator's log goes next to the cluster's, kept when the test fails.
	opLog, err := os.Create(filepath.Join(env.Dir(), "operator.log"))
	must(t, err)
	defer func() { _ = opLog.Close() }()
	ctrl.SetLogger(zap.New(zap.WriteTo(opLog), zap.UseDevMode(true)))
	defer func() {
		if t.Failed() {
			env.MarkFailed()
		}
		_ = env.Stop()
	}()
	node, err := kvnode.Start(ctx, env.Config, kvnode.Options{AuditLog: env.AuditLog, HookSidecarImage: hookSidecarImage})
	must(t, err)
	defer func() { _ = node.Stop() }()
	// The operator runs as the chart installs it: its ServiceAccount's token under the chart's RBAC and admission
	// policies, with the chart's Deployment args (test settings as chart values).
	chartOp, err := chartrbac.Install(ctx, env, append(chartrbac.HookSidecarImage(hookSidecarImage),
		append(chartrbac.SingleReplica, "restartBackoff.base=1s", "restartBackoff.max=4s",
			"maxConcurrentStarts="+strconv.Itoa(*maxStartsFlag))...)...)
	must(t, err)
	real, err := lifecycle.NewClient(chartOp.Config)
	must(t, err)

	w := &world{t: t, ctx: ctx, env: env, k8s: env.Client, node: node, models: map[string]*model{}, counts: map[string]int{},
		kvUIDs: map[string]types.UID{}, dvUIDs: map[string]types.UID{}}
	lc := &fault.Lifecycle{Client: real}
	w.op = &operator{chart: chartOp, lc: lc}
	w.kill = &killer{lc: lc, op: w.op}
	must(t, w.op.start())
	defer w.op.stop()
	must(t, w.startCache())

	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "chaos"}}
	must(t, w.k8s.Create(ctx, nsObj))
	w.ns = nsObj.Name

	// Create the VMs with random policies.
	for i := range nVMs {
		p := policies[rng.IntN(len(policies))]
		name := fmt.Sprintf("vm-%02d", i)
		m := &model{policy: p, running: p == v1alpha1.RunPolicyAlwaysOn || p == v1alpha1.RunPolicyAlwaysOnUntilStoppedManually}
		if m.running {
			m.vmis = 1
		}
		w.models[name] = m
		vm := fixture.VM(w.ns, name, p)
		if i%2 == 0 { // every other VM has a disk KubeVirt provisions as a DataVolume
			vm = fixture.WithDataVolume(vm)
			w.dvUIDs[name] = ""
		}
		must(t, w.k8s.Create(ctx, vm))
	}
	if bad := w.waitSettled(nil, *settleFlag); len(bad) > 0 {
		t.Fatalf("the VMs did not settle after creation: %v", bad)
	}
	for name := range w.models {
		kvvm := &kvv1.VirtualMachine{}
		must(t, w.k8s.Get(ctx, client.ObjectKey{Namespace: w.ns, Name: name}, kvvm))
		w.kvUIDs[name] = kvvm.UID
	}
	for name := range w.dvUIDs {
		dv, err := w.dataVolume(name)
		must(t, err)
		w.dvUIDs[name] = dv.UID
	}

	start := time.Now()
	var bg sync.WaitGroup
	for i := range nEvents {
		w.step(rng, i, &bg)
		if i%100 == 99 {
			t.Logf("chaos: %d events in %s", i+1, time.Since(start).Round(time.Second))
		}
	}
	bg.Wait()
	w.op.ensureRunning()
	t.Logf("chaos: events done in %s; settling", time.Since(start).Round(time.Second))

	// The end state.
	names := slices.Sorted(mapsKeys(w.models))
	bad := w.waitSettled(names, *settleFlag)
	for _, b := range bad {
		t.Errorf("VM not in the state its policy and history demand: %s", b)
	}
	totalVMIs, totalResets := 0, 0
	for _, name := range names {
		m := w.models[name]
		got := node.VMIsCreated(w.ns, name)
		totalVMIs += got
		totalResets += m.resets
		if got != m.vmis {
			t.Errorf("%s (%s): KubeVirt created %d VMIs, the history demands %d (a reset or start acted twice, or not at all); UIDs %v",
				name, m.policy, got, m.vmis, node.VMIUIDs(w.ns, name))
		}
		kvvm := &kvv1.VirtualMachine{}
		if err := w.k8s.Get(ctx, client.ObjectKey{Namespace: w.ns, Name: name}, kvvm); err != nil {
			t.Errorf("%s: KubeVirt VM: %v", name, err)
		} else if kvvm.UID != w.kvUIDs[name] {
			t.Errorf("%s: the KubeVirt VM was deleted and recreated (UID %s, was %s)", name, kvvm.UID, w.kvUIDs[name])
		}
	}
	if d := w.kvVMDeletes.Load(); d > 0 {
		t.Errorf("%d KubeVirt VirtualMachines were deleted; the user deleted none", d)
	}
	for _, name := range slices.Sorted(mapsKeys(w.dvUIDs)) {
		if dv, err := w.dataVolume(name); err != nil {
			t.Errorf("%s: DataVolume: %v", name, err)
		} else if dv.UID != w.dvUIDs[name] {
			t.Errorf("%s: the DataVolume was deleted and recreated (UID %s, was %s)", name, dv.UID, w.dvUIDs[name])
		}
	}
	if d := w.dvDeletes.Load(); d > 0 {
		t.Errorf("%d DataVolumes were deleted; the user deleted none", d)
	}

	w.mu.Lock()
	keys := slices.Sorted(mapsKeys(w.counts))
	for _, k := range keys {
		t.Logf("chaos: %-28s %d", k, w.counts[k])
	}
	w.mu.Unlock()
	t.Logf("chaos: operator restarts %d (kills mid-Start: before %d, after %d)", w.op.restarts.Load(), w.kill.killedBefore.Load(), w.kill.killedAfter.Load())
	t.Logf("chaos: conflict storms wrote %d times, %d conflicts seen by the storm itself", w.stormWrites.Load(), w.conflicts.Load())
	t.Logf("chaos: VMIs created %d, guest resets %d, KubeVirt VM deletions %d, DataVolume deletions %d (of %d), subresource calls %d, VMs off-model at the end %d",
		totalVMIs, totalResets, w.kvVMDeletes.Load(), w.dvDeletes.Load(), len(w.dvUIDs), len(node.Calls()), len(bad))
	t.Logf("chaos: total %s", time.Since(start).Round(time.Second))
}

// step applies one random event.
func (w *world) step(rng *rand.Rand, i int, bg *sync.WaitGroup) {
	x := rng.IntN(100)
	switch {
	case x < 4: // operator killed between reconciles, restarted at once
		w.count("operator kill (between)")
		w.op.stop()
		w.op.ensureRunning()
		return
	case x < 7: // operator killed at a random point in the next few hundred ms, restarted
		w.count("operator kill (random time)")
		d := time.Duration(rng.IntN(500)) * time.Millisecond
		bg.Go(func() {
			time.Sleep(d)
			w.op.stop()
			w.op.ensureRunning()
		})
		return
	case x < 10: // operator killed around its next KubeVirt Start call
		w.count("operator kill (around Start)")
		w.kill.arm(rng.IntN(2) == 0)
		return
	case x < 13: // conflict storm: rapid writes to runpolicy and KubeVirt VMs
		w.count("conflict storm")
		d := time.Duration(1000+rng.IntN(3000)) * time.Millisecond
		for range 4 { // four writers at once
			sub := rng.Uint64()
			bg.Go(func() { w.storm(d, sub) })
		}
		return
	}

	// A VM-targeted event on a settled VM.
	name := w.pickSettled(rng)
	if name == "" {
		w.count("skipped (nothing settled)")
		time.Sleep(200 * time.Millisecond)
		return
	}
	w.mu.Lock()
	m := *w.models[name]
	w.mu.Unlock()
	var err error
	switch y := rng.IntN(100); {
	case y < 20 && m.running:
		w.count("guest reboot")
		if err = w.node.GuestReboot(w.ctx, w.ns, name); err == nil {
			m.resets++
			m.vmis++ // every policy that runs brings it back with one new VMI
		}
	case y < 32 && m.running:
		w.count("guest poweroff")
		if err = w.node.GuestPoweroff(w.ctx, w.ns, name); err == nil {
			if m.policy == v1alpha1.RunPolicyAlwaysOn {
				m.vmis++
			} else {
				m.running = false
			}
		}
	case y < 42 && m.running:
		w.count("guest crash")
		if err = w.node.GuestCrash(w.ctx, w.ns, name); err == nil {
			if m.policy == v1alpha1.RunPolicyManual {
				m.running = false
			} else {
				m.vmis++
			}
		}
	case y < 67:
		typ := []v1alpha1.VirtualMachineOperationType{v1alpha1.OperationStart, v1alpha1.OperationStop, v1alpha1.OperationRestart}[rng.IntN(3)]
		force := typ != v1alpha1.OperationStart && rng.IntN(2) == 0
		w.count("vmop " + string(typ))
		err = w.vmop(name, typ, force)
		userPolicy := m.policy == v1alpha1.RunPolicyManual || m.policy == v1alpha1.RunPolicyAlwaysOnUntilStoppedManually
		switch {
		case err != nil:
		case typ == v1alpha1.OperationStart && userPolicy && !m.running:
			m.running, m.vmis = true, m.vmis+1
		case typ == v1alpha1.OperationStop && userPolicy && m.running:
			m.running = false
		case typ == v1alpha1.OperationRestart && m.policy != v1alpha1.RunPolicyAlwaysOff && m.running:
			m.vmis++
		}
	default:
		p := policies[rng.IntN(len(policies))]
		if p == m.policy { // a change, not a no-op: pick the next policy
			p = policies[(slices.Index(policies, p)+1)%len(policies)]
		}
		w.count("policy change")
		if err = w.setPolicy(name, p); err == nil {
			m.policy = p
			switch p {
			case v1alpha1.RunPolicyAlwaysOff:
				m.running = false
			case v1alpha1.RunPolicyAlwaysOn, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually:
				if !m.running {
					m.running, m.vmis = true, m.vmis+1
				}
			}
		}
	}
	if err != nil {
		w.count("event refused (" + errKind(err) + ")")
		if err != errNotApplicable {
			w.t.Logf("chaos: event %d on %s: %v", i, name, err)
		}
	}
	w.mu.Lock()
	w.models[name] = &m
	w.mu.Unlock()
}

func errKind(err error) string {
	switch {
	case apierrors.IsConflict(err):
		return "conflict"
	default:
		return "not applicable now"
	}
}

// vmop creates an operation and waits until it is final (so the VM's next event sees its effect).
func (w *world) vmop(name string, typ v1alpha1.VirtualMachineOperationType, force bool) error {
	op := &v1alpha1.VirtualMachineOperation{
		ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, GenerateName: name + "-" + strings.ToLower(string(typ)) + "-"},
		Spec:       v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: name, Type: typ, Force: force},
	}
	if err := w.k8s.Create(w.ctx, op); err != nil {
		w.t.Errorf("creating a %s operation for %s: %v", typ, name, err)
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		cur := &v1alpha1.VirtualMachineOperation{}
		if err := w.k8s.Get(w.ctx, client.ObjectKeyFromObject(op), cur); err != nil {
			if apierrors.IsNotFound(err) { // garbage-collected after finishing
				return nil
			}
			return err
		}
		switch cur.Status.Phase {
		case v1alpha1.OperationCompleted:
			return nil
		case v1alpha1.OperationFailed:
			w.count("vmop failed (" + condReason(cur) + ")")
			return errNotApplicable
		}
		time.Sleep(100 * time.Millisecond)
	}
	w.t.Errorf("operation %s/%s (%s) did not finish in 2m", w.ns, op.Name, typ)
	return errNotApplicable
}

var errNotApplicable = fmt.Errorf("not applicable")

func condReason(op *v1alpha1.VirtualMachineOperation) string {
	if c := meta.FindStatusCondition(op.Status.Conditions, v1alpha1.OperationConditionCompleted); c != nil {
		return c.Reason
	}
	return ""
}

func (w *world) setPolicy(name string, p v1alpha1.RunPolicy) error {
	obj := &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name}}
	return w.k8s.Patch(w.ctx, obj, client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"spec":{"runPolicy":%q}}`, p)))
}

// storm updates (not patches: every write carries a resourceVersion) annotations of random runpolicy VMs and
// their KubeVirt VMs as fast as it can for d.
func (w *world) storm(d time.Duration, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	names := slices.Sorted(mapsKeys(w.snapshotModels()))
	end := time.Now().Add(d)
	for i := 0; time.Now().Before(end); i++ {
		name := names[rng.IntN(len(names))]
		var obj client.Object = &v1alpha1.VirtualMachine{}
		if rng.IntN(2) == 0 {
			obj = &kvv1.VirtualMachine{}
		}
		if err := w.k8s.Get(w.ctx, client.ObjectKey{Namespace: w.ns, Name: name}, obj); err != nil {
			continue
		}
		ann := obj.GetAnnotations()
		if ann == nil {
			ann = map[string]string{}
		}
		ann["chaos.runpolicy.io/storm"] = strconv.Itoa(i)
		obj.SetAnnotations(ann)
		err := w.k8s.Update(w.ctx, obj)
		w.stormWrites.Add(1)
		if apierrors.IsConflict(err) {
			w.conflicts.Add(1)
		}
	}
}

func (w *world) snapshotModels() map[string]model {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]model{}
	for k, v := range w.models {
		out[k] = *v
	}
	return out
}

// settled returns "" when the VM matches its model, else why not.
func (w *world) settled(name string, m model) string {
	vm := &v1alpha1.VirtualMachine{}
	if err := w.cache.Get(w.ctx, client.ObjectKey{Namespace: w.ns, Name: name}, vm); err != nil {
		return err.Error()
	}
	want := v1alpha1.VirtualMachineStopped
	if m.running {
		want = v1alpha1.VirtualMachineRunning
	}
	ready := meta.FindStatusCondition(vm.Status.Conditions, v1alpha1.ConditionReady)
	switch {
	case vm.Spec.RunPolicy != m.policy:
		return fmt.Sprintf("policy %s in the cache, model %s", vm.Spec.RunPolicy, m.policy)
	case vm.Status.ObservedGeneration != vm.Generation:
		return fmt.Sprintf("observedGeneration %d of %d", vm.Status.ObservedGeneration, vm.Generation)
	case vm.Status.Phase != want:
		return fmt.Sprintf("phase %s, want %s (policy %s)", vm.Status.Phase, want, m.policy)
	case m.running && (ready == nil || ready.Status != metav1.ConditionTrue):
		return "running but not Ready"
	case vm.Status.RestartingVMIUID != "":
		return "restart in flight"
	}
	vmi := &kvv1.VirtualMachineInstance{}
	err := w.cache.Get(w.ctx, client.ObjectKey{Namespace: w.ns, Name: name}, vmi)
	switch {
	case m.running && err != nil:
		return "no VMI"
	case m.running && (vmi.Status.Phase != kvv1.Running || vmi.DeletionTimestamp != nil):
		return fmt.Sprintf("VMI %s", vmi.Status.Phase)
	case !m.running && err == nil:
		return fmt.Sprintf("a VMI (%s) is left", vmi.Status.Phase)
	case m.running && w.node.VMIsCreated(w.ns, name) != m.vmis:
		return fmt.Sprintf("%d VMIs created, want %d", w.node.VMIsCreated(w.ns, name), m.vmis)
	}
	return ""
}

func (w *world) pickSettled(rng *rand.Rand) string {
	models := w.snapshotModels()
	names := slices.Sorted(mapsKeys(models))
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		start := rng.IntN(len(names))
		for k := range names {
			name := names[(start+k)%len(names)]
			if w.settled(name, models[name]) == "" {
				return name
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return ""
}

// waitSettled waits until every VM (names, or all) matches its model; it returns those that never did.
func (w *world) waitSettled(names []string, limit time.Duration) []string {
	deadline := time.Now().Add(limit)
	for {
		models := w.snapshotModels()
		if names == nil {
			names = slices.Sorted(mapsKeys(models))
		}
		var bad []string
		for _, name := range names {
			if why := w.settled(name, models[name]); why != "" {
				bad = append(bad, fmt.Sprintf("%s (%s): %s", name, models[name].policy, why))
			}
		}
		if len(bad) == 0 || time.Now().After(deadline) {
			return bad
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// dataVolume reads the DataVolume fixture.WithDataVolume gave VM name, past the cache.
func (w *world) dataVolume(name string) (*metav1.PartialObjectMetadata, error) {
	dv := &metav1.PartialObjectMetadata{}
	dv.SetGroupVersionKind(kvnode.DataVolumeGVK)
	return dv, w.k8s.Get(w.ctx, client.ObjectKey{Namespace: w.ns, Name: fixture.DataVolumeName(name)}, dv)
}

func (w *world) startCache() error {
	c, err := cache.New(w.env.Config, cache.Options{Scheme: w.env.Scheme})
	if err != nil {
		return err
	}
	inf, err := c.GetInformer(w.ctx, &kvv1.VirtualMachine{})
	if err != nil {
		return err
	}
	if _, err := inf.AddEventHandler(deleteCounter{&w.kvVMDeletes}); err != nil {
		return err
	}
	dvs := &metav1.PartialObjectMetadata{}
	dvs.SetGroupVersionKind(kvnode.DataVolumeGVK)
	dvInf, err := c.GetInformer(w.ctx, dvs)
	if err != nil {
		return err
	}
	if _, err := dvInf.AddEventHandler(deleteCounter{&w.dvDeletes}); err != nil {
		return err
	}
	for _, o := range []client.Object{&v1alpha1.VirtualMachine{}, &kvv1.VirtualMachineInstance{}} {
		if _, err := c.GetInformer(w.ctx, o); err != nil {
			return err
		}
	}
	go func() { _ = c.Start(w.ctx) }()
	if !c.WaitForCacheSync(w.ctx) {
		return fmt.Errorf("cache did not sync")
	}
	w.cache = c
	return nil
}

type deleteCounter struct{ n *atomic.Int64 }

func (deleteCounter) OnAdd(any, bool)   {}
func (deleteCounter) OnUpdate(any, any) {}
func (d deleteCounter) OnDelete(any)    { d.n.Add(1) }

// operator runs runpolicy's manager in-process and can be killed and started again like a crashed pod.
type operator struct {
	chart    *chartrbac.Operator
	lc       lifecycle.Interface
	mu       sync.Mutex
	cancel   context.CancelFunc
	done     chan struct{}
	restarts atomic.Int64
}

func (o *operator) start() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.startLocked()
}

func (o *operator) startLocked() error {
	mgr, opts, err := o.chart.Manager()
	if err != nil {
		return err
	}
	opts.Lifecycle = o.lc
	if err := controllers.Setup(mgr, opts); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	o.cancel, o.done = cancel, make(chan struct{})
	o.restarts.Add(1)
	go func(done chan struct{}) {
		defer close(done)
		_ = mgr.Start(ctx)
	}(o.done)
	return nil
}

// kill cancels the manager without waiting: safe from inside a reconcile.
func (o *operator) kill() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cancel != nil {
		o.cancel()
	}
}

func (o *operator) stop() {
	o.kill()
	o.mu.Lock()
	done := o.done
	o.mu.Unlock()
	if done != nil {
		<-done
	}
}

// ensureRunning starts the manager again if it was killed (once, however many callers race).
func (o *operator) ensureRunning() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done != nil {
		select {
		case <-o.done:
		default:
			return // running
		}
	}
	if err := o.startLocked(); err != nil {
		panic(err)
	}
}

// killer kills the operator around its next restart request (fault.Lifecycle), restarting it in the background,
// like a pod dying mid-restart, and counts the kills.
type killer struct {
	lc                        *fault.Lifecycle
	op                        *operator
	killedBefore, killedAfter atomic.Int64
}

// arm kills the operator right before the next restart request, or (after) right after its first step: the
// request of Replace, the call of Start.
func (k *killer) arm(after bool) {
	if !after {
		k.lc.Arm(fault.Before, func() { k.killedBefore.Add(1); k.killAndRestart() })
		return
	}
	k.lc.Arm(fault.Between, func() { k.killedAfter.Add(1); k.killAndRestart() })
}

func (k *killer) killAndRestart() {
	k.op.kill()
	go func() {
		k.op.mu.Lock()
		done := k.op.done
		k.op.mu.Unlock()
		<-done
		k.op.ensureRunning()
	}()
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
