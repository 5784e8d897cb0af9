package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"os/exec"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/fixture"
)

// memoryCase is one kind of what namespace users store in their runpolicy VMs (-memory).
type memoryCase struct {
	name string
	// store puts it into a VM.
	store func(vm *v1alpha1.VirtualMachine)
}

// memoryFigures are the operator's peak RSS (VmHWM, MiB) in one case.
type memoryFigures struct {
	// create: an operator running while the VMs are created, until each is Synced.
	create float64
	// streamed, listed: a new operator started with every VM present (what a crash-looping operator does at every
	// start): its initial list streamed (client-go's WatchList, the default) or listed (WatchListClient off, as
	// against a kube-apiserver without WatchList).
	streamed, listed float64
	// streamedBy and listedBy say how each one's informer of runpolicy VMs read them (from kube-apiserver's audit log).
	streamedBy, listedBy string
	// kept says whether the VMs still hold what the user stored, after the operator wrote their status.
	kept string
}

// memoryAuditPolicy records the reads of runpolicy VMs at Metadata level, to tell how informers list them.
const memoryAuditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["list", "watch"]
  resources: [{group: runpolicy.io, resources: [virtualmachines]}]
- level: None
`

// memoryScenario measures the operator's peak RSS next to the chart's memory limit with n runpolicy VMs in three
// cases: one-line templates (the baseline), annotations bytes of annotations on each VM (kube-apiserver allows
// 256 KiB), and templates of templateSize bytes (-memory, issue 23). Each case runs on a cluster of its own, where
// only kube-apiserver runs: what is measured is what the operator's caches keep of what users store, and what
// reading it costs, while the VMs are created and when an operator starts with all of them present.
func memoryScenario(ctx context.Context, operator string, n, annotations, templateSize int) error {
	cases := []memoryCase{
		{name: "one-line templates (baseline)", store: func(*v1alpha1.VirtualMachine) {}},
		{name: fmt.Sprintf("%d KiB of annotations each", annotations>>10), store: func(vm *v1alpha1.VirtualMachine) {
			vm.Annotations = map[string]string{"user-data": strings.Repeat("a", annotations)}
		}},
		{name: fmt.Sprintf("%.1f MB templates", float64(templateSize)/1e6), store: func(vm *v1alpha1.VirtualMachine) {
			vm.Spec.Template.ObjectMeta.Annotations = map[string]string{"user-data": strings.Repeat("x", templateSize)}
		}},
	}
	figures := make([]memoryFigures, 0, len(cases))
	for _, c := range cases {
		log.Printf("bench: memory: %d VMs with %s", n, c.name)
		f, err := measureMemory(ctx, operator, n, c)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		figures = append(figures, f)
	}
	fmt.Printf("\nOperator peak RSS (VmHWM) with %d runpolicy VMs; the chart's memory limit is %d MiB\n\n", n, chartMemoryLimitMiB)
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	_, _ = fmt.Fprintln(w, "VMs with\tcreated, synced\tnew operator, list streamed\tnew operator, list not streamed\tuser's data kept")
	over, overListed := false, false
	for i, f := range figures {
		_, _ = fmt.Fprintf(w, "%s\t%.0f MiB\t%.0f MiB (%s)\t%.0f MiB (%s)\t%s\n", cases[i].name, f.create, f.streamed, f.streamedBy,
			f.listed, f.listedBy, f.kept)
		over = over || max(f.create, f.streamed) >= chartMemoryLimitMiB
		overListed = overListed || f.listed >= chartMemoryLimitMiB
	}
	_ = w.Flush()
	if over {
		log.Printf("bench: the operator would be OOM-killed under the chart's limit")
	}
	if overListed {
		log.Printf("bench: where lists are not streamed (client-go's WatchListClient off, or a kube-apiserver without WatchList), " +
			"the operator would be OOM-killed under the chart's limit at its first list")
	}
	return nil
}

// measureMemory runs one case on a cluster of its own.
func measureMemory(ctx context.Context, operator string, n int, c memoryCase) (memoryFigures, error) {
	var f memoryFigures
	env, err := cluster.Start(cluster.Options{AuditPolicy: memoryAuditPolicy,
		// A run stores up to 400 objects of 1.4 MB twice (runpolicy's and KubeVirt's VMs), and each status write
		// is a new revision: more than etcd's default 2 GiB quota before kube-apiserver compacts.
		EtcdArgs: map[string][]string{"quota-backend-bytes": {fmt.Sprint(8 << 30)}}})
	if err != nil {
		return f, err
	}
	defer func() { _ = env.Stop() }()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "memory"}}
	if err := env.Client.Create(ctx, ns); err != nil {
		return f, err
	}

	op, err := startMemoryOperator(ctx, operator, env, nil)
	if err != nil {
		return f, err
	}
	defer op.stop()
	r := &run{cfg: config{workers: 4}}
	err = r.parallel(n, func(i int) error {
		vm := fixture.VM(ns.Name, fmt.Sprintf("vm-%03d", i), v1alpha1.RunPolicyAlwaysOff)
		c.store(vm)
		return env.Client.Create(ctx, vm)
	})
	if err != nil {
		return f, fmt.Errorf("creating VMs: %w", err)
	}
	if err := waitSynced(ctx, env.Client, ns.Name, n, op); err != nil {
		return f, err
	}
	if f.create, err = op.peak(); err != nil {
		return f, err
	}
	op.stop()

	auditFrom := auditSize(env.AuditLog)
	for _, listed := range []bool{false, true} {
		var extra []string
		if listed {
			extra = []string{"KUBE_FEATURE_WatchListClient=false"}
		}
		op, err := startMemoryOperator(ctx, operator, env, extra)
		if err != nil {
			return f, err
		}
		// Every VM reconciled once: the informers have listed them all and each was looked at.
		err = op.waitReconciled(n)
		peak, perr := op.peak()
		op.stop()
		if err != nil {
			return f, err
		}
		if perr != nil {
			return f, perr
		}
		how, next := initialReads(env.AuditLog, auditFrom)
		auditFrom = next
		if listed {
			f.listed, f.listedBy = peak, how
		} else {
			f.streamed, f.streamedBy = peak, how
		}
	}

	// The cached copies carry none of it; the status writes made from them must not have removed it either.
	got, want := &v1alpha1.VirtualMachine{}, fixture.VM(ns.Name, "vm-000", v1alpha1.RunPolicyAlwaysOff)
	c.store(want)
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(want), got); err != nil {
		return f, err
	}
	f.kept = "yes"
	if got.Annotations["user-data"] != want.Annotations["user-data"] || !equalTemplates(got, want) || len(got.Status.Conditions) == 0 {
		f.kept = "NO"
	}
	return f, nil
}

func equalTemplates(a, b *v1alpha1.VirtualMachine) bool {
	return a.Spec.Template.ObjectMeta.Annotations["user-data"] == b.Spec.Template.ObjectMeta.Annotations["user-data"]
}

// countSynced counts the VMs of ns that say Synced=True.
func countSynced(ctx context.Context, c client.Client, ns string) (int, error) {
	var vms v1alpha1.VirtualMachineList
	if err := c.List(ctx, &vms, client.InNamespace(ns)); err != nil {
		return 0, err
	}
	synced := 0
	for _, vm := range vms.Items {
		if c := meta.FindStatusCondition(vm.Status.Conditions, v1alpha1.ConditionSynced); c != nil && c.Status == metav1.ConditionTrue {
			synced++
		}
	}
	return synced, nil
}

// waitSynced waits until every VM of ns says Synced=True, then a while longer (the operator settles).
func waitSynced(ctx context.Context, c client.Client, ns string, n int, op *memoryOperator) error {
	deadline := time.Now().Add(15 * time.Minute)
	for {
		synced, err := countSynced(ctx, c, ns)
		if err != nil {
			return err
		}
		if synced == n {
			break
		}
		if op.exited() {
			return fmt.Errorf("the operator exited with %d of %d VMs synced (log: %s)", synced, n, op.log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d VMs synced after 15 min", synced, n)
		}
		time.Sleep(time.Second)
	}
	time.Sleep(10 * time.Second)
	return nil
}

// memoryOperator is an operator process of the memory scenario.
type memoryOperator struct {
	cmd     *exec.Cmd
	done    chan struct{}
	metrics string
	log     string
}

// startMemoryOperator runs the operator binary against env, with extra environment variables.
func startMemoryOperator(ctx context.Context, operator string, env *cluster.Env, extraEnv []string) (*memoryOperator, error) {
	chart, err := chartOperator(ctx, env, operatorChartValues())
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logf, err := os.CreateTemp("", "operator-memory-*.log")
	if err != nil {
		return nil, err
	}
	op := &memoryOperator{metrics: fmt.Sprintf("127.0.0.1:%d", port), done: make(chan struct{}), log: logf.Name()}
	// As the chart runs it (its RBAC, token, args and memory limit), listening on this host's loopback.
	op.cmd = operatorCommand(operator, chart, "--metrics-bind-address="+op.metrics, "--health-probe-bind-address=0")
	op.cmd.Env = append(op.cmd.Env, extraEnv...)
	op.cmd.Stdout, op.cmd.Stderr = logf, logf
	if err := op.cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, err
	}
	go func() { _ = op.cmd.Wait(); _ = logf.Close(); close(op.done) }()
	return op, nil
}

func (o *memoryOperator) exited() bool {
	select {
	case <-o.done:
		return true
	default:
		return false
	}
}

// peak is the running operator's peak RSS in MiB.
func (o *memoryOperator) peak() (float64, error) {
	if o.exited() {
		return 0, fmt.Errorf("the operator exited (log: %s)", o.log)
	}
	hwm, err := memKiB(o.cmd.Process.Pid)
	return float64(hwm) / 1024, err
}

func (o *memoryOperator) stop() {
	if o.exited() {
		return
	}
	_ = o.cmd.Process.Kill()
	<-o.done
}

// waitReconciled waits until the operator's virtualmachine controller has reconciled n times and its queue is
// empty, then a while longer.
func (o *memoryOperator) waitReconciled(n int) error {
	deadline := time.Now().Add(15 * time.Minute)
	for {
		m, err := o.scrape()
		if err == nil && m.reconciles >= float64(n) && m.queueDepth == 0 {
			break
		}
		if o.exited() {
			return fmt.Errorf("the operator exited (log: %s)", o.log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the operator reconciled %.0f of %d VMs in 15 min (%v)", m.reconciles, n, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(5 * time.Second)
	return nil
}

func (o *memoryOperator) scrape() (opMetrics, error) {
	r := &run{metrics: o.metrics}
	return r.scrape()
}

// auditSize is the audit log's size: where the next operator's requests start.
func auditSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// initialReads tells, from kube-apiserver's audit log after offset from, how runpolicy VMs were read cluster-wide
// (only the operator's informer does): watches with sendInitialEvents=true (a streamed list) and lists, with how
// many of those were pages. It returns the log's size, where the next reads start.
func initialReads(path string, from int64) (string, int64) {
	f, err := os.Open(path)
	if err != nil {
		return "no audit log", from
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Seek(from, 0); err != nil {
		return err.Error(), from
	}
	seen := map[string]bool{}
	streamed, lists, pages := 0, 0, 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e struct {
			AuditID    string `json:"auditID"`
			Stage      string `json:"stage"`
			Verb       string `json:"verb"`
			RequestURI string `json:"requestURI"`
		}
		// A watch is counted when it starts (the previous operator's end when it is killed), a list when it is
		// answered.
		if json.Unmarshal(sc.Bytes(), &e) != nil || seen[e.AuditID] ||
			!strings.HasPrefix(e.RequestURI, "/apis/runpolicy.io/v1alpha1/virtualmachines") {
			continue
		}
		switch {
		case e.Verb == "watch" && e.Stage == "ResponseStarted" && strings.Contains(e.RequestURI, "sendInitialEvents=true"):
			seen[e.AuditID] = true
			streamed++
		case e.Verb == "list" && e.Stage == "ResponseComplete":
			seen[e.AuditID] = true
			lists++
			if strings.Contains(e.RequestURI, "continue=") {
				pages++
			}
		}
	}
	end := auditSize(path)
	switch {
	case streamed > 0 && lists == 0:
		return fmt.Sprintf("%d streamed", streamed), end
	case lists > 0:
		return fmt.Sprintf("%d list(s), %d continued page(s), %d streamed", lists, pages, streamed), end
	}
	return "no initial read seen", end
}
