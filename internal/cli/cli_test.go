//go:build !unit

package cli_test

// The plugin against the real kube-apiserver of the test cluster (test/cluster, runpolicy's CRDs installed), driven
// through cli.Run with buffers and the cluster's admin kubeconfig, as a user would run it. No operator runs: where
// a test needs an operation to finish, the test plays the operator and writes the operation's status.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/cli"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/fixture"
)

var (
	env      *cluster.Env
	k8s      client.Client
	cacheDir string
)

func TestMain(m *testing.M) {
	os.Exit(func() int {
		ctrllog.SetLogger(logr.Discard()) // envtest logs through controller-runtime's logger
		var err error
		if env, err = cluster.Start(cluster.Options{}); err != nil {
			fmt.Fprintln(os.Stderr, "starting the test cluster:", err)
			return 1
		}
		defer func() { _ = env.Stop() }()
		k8s = env.Client
		if cacheDir, err = os.MkdirTemp("", "kubectl-runpolicy-cache-"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer func() { _ = os.RemoveAll(cacheDir) }()
		code := m.Run()
		if code != 0 {
			env.MarkFailed()
		}
		return code
	}())
}

// result is what one run of the plugin gave.
type result struct {
	code        int
	out, errOut string
}

// run runs kubectl-runpolicy with args against the test cluster, in namespace ns.
func run(ctx context.Context, ns string, args ...string) result {
	var out, errOut bytes.Buffer
	streams := genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}
	args = append(args, "--kubeconfig", env.Kubeconfig, "--cache-dir", cacheDir, "-n", ns)
	code := cli.Run(ctx, streams, args)
	return result{code: code, out: out.String(), errOut: errOut.String()}
}

// start runs the plugin in the background; its result arrives on the channel.
func start(ctx context.Context, ns string, args ...string) <-chan result {
	ch := make(chan result, 1)
	go func() { ch <- run(ctx, ns, args...) }()
	return ch
}

func namespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "cli-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), ns) })
	return ns.Name
}

func createVM(t *testing.T, ns, name string, p v1alpha1.RunPolicy, labels map[string]string) *v1alpha1.VirtualMachine {
	t.Helper()
	vm := fixture.VM(ns, name, p)
	vm.Labels = labels
	if err := k8s.Create(context.Background(), vm); err != nil {
		t.Fatal(err)
	}
	return vm
}

// operations returns the namespace's operations, sorted by VM name.
func operations(g Gomega, ns string) []v1alpha1.VirtualMachineOperation {
	list := &v1alpha1.VirtualMachineOperationList{}
	g.Expect(k8s.List(context.Background(), list, client.InNamespace(ns))).To(Succeed())
	slices.SortFunc(list.Items, func(a, b v1alpha1.VirtualMachineOperation) int {
		return strings.Compare(a.Spec.VirtualMachineName, b.Spec.VirtualMachineName)
	})
	return list.Items
}

func vmNames(ops []v1alpha1.VirtualMachineOperation) []string {
	names := make([]string, 0, len(ops))
	for _, op := range ops {
		names = append(names, op.Spec.VirtualMachineName)
	}
	return names
}

// finish plays the operator: it writes the operation's status as the VMOP controller would at the end.
func finish(g Gomega, op *v1alpha1.VirtualMachineOperation, phase v1alpha1.VirtualMachineOperationPhase, reason, message string) {
	op.Status.Phase = phase
	status := metav1.ConditionFalse
	if phase == v1alpha1.OperationCompleted {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&op.Status.Conditions, metav1.Condition{
		Type: v1alpha1.OperationConditionCompleted, Status: status, Reason: reason, Message: message,
	})
	if phase == v1alpha1.OperationCompleted || phase == v1alpha1.OperationFailed {
		op.Status.CompletionTime = &metav1.Time{Time: time.Now()}
	}
	g.Expect(k8s.Status().Update(context.Background(), op)).To(Succeed())
}

// awaitOperation waits until the plugin created the operation for vm and returns it.
func awaitOperation(g Gomega, ns, vm string) *v1alpha1.VirtualMachineOperation {
	var found *v1alpha1.VirtualMachineOperation
	g.Eventually(func() bool {
		for _, op := range operations(g, ns) {
			if op.Spec.VirtualMachineName == vm {
				found = &op
				return true
			}
		}
		return false
	}).WithTimeout(time.Minute).Should(BeTrue())
	return found
}

var createdLine = regexp.MustCompile(`^virtualmachineoperation\.runpolicy\.io/([a-z0-9.-]+) created$`)

// created returns the operation names the "created" lines of out name, in order.
func created(out string) []string {
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if m := createdLine.FindStringSubmatch(line); m != nil {
			names = append(names, m[1])
		}
	}
	return names
}

func TestStartStopRestartCreateOperations(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := namespace(t)
	createVM(t, ns, "web", v1alpha1.RunPolicyManual, nil)
	createVM(t, ns, "db", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, nil)

	r := run(ctx, ns, "restart", "web", "--force")
	g.Expect(r.code).To(Equal(0), r.errOut)
	g.Expect(r.errOut).To(BeEmpty())
	g.Expect(r.out).To(MatchRegexp(`^virtualmachineoperation\.runpolicy\.io/web-restart-[a-z0-9]{5} created\n$`))
	ops := operations(g, ns)
	g.Expect(ops).To(HaveLen(1))
	op := ops[0]
	g.Expect(created(r.out)).To(Equal([]string{op.Name}))
	g.Expect(op.GenerateName).To(Equal("web-restart-"))
	g.Expect(op.Spec).To(Equal(v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: "web", Type: v1alpha1.OperationRestart, Force: true}))
	g.Expect(op.Labels).To(Equal(map[string]string{"app.kubernetes.io/created-by": "kubectl-runpolicy"}))
	g.Expect(op.ManagedFields).NotTo(BeEmpty())
	g.Expect(op.ManagedFields[0].Manager).To(Equal(cli.FieldManager))
	g.Expect(k8s.Delete(ctx, &op)).To(Succeed())

	r = run(ctx, ns, "stop", "web", "db")
	g.Expect(r.code).To(Equal(0), r.errOut)
	g.Expect(created(r.out)).To(HaveLen(2))
	g.Expect(r.out).To(MatchRegexp(`^virtualmachineoperation\.runpolicy\.io/web-stop-[a-z0-9]{5} created\nvirtualmachineoperation\.runpolicy\.io/db-stop-[a-z0-9]{5} created\n$`))
	ops = operations(g, ns)
	g.Expect(vmNames(ops)).To(Equal([]string{"db", "web"}))
	for _, op := range ops {
		g.Expect(op.Spec.Type).To(Equal(v1alpha1.OperationStop))
		g.Expect(op.Spec.Force).To(BeFalse())
		g.Expect(op.GenerateName).To(Equal(op.Spec.VirtualMachineName + "-stop-"))
		g.Expect(op.Labels).To(HaveKeyWithValue(cli.LabelCreatedBy, cli.FieldManager))
		g.Expect(k8s.Delete(ctx, &op)).To(Succeed())
	}

	r = run(ctx, ns, "start", "db", "db") // a name given twice is one operation
	g.Expect(r.code).To(Equal(0), r.errOut)
	ops = operations(g, ns)
	g.Expect(ops).To(HaveLen(1))
	g.Expect(ops[0].Spec).To(Equal(v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: "db", Type: v1alpha1.OperationStart}))
	g.Expect(ops[0].Name).To(HavePrefix("db-start-"))

	// force has no meaning for Start (the API refuses it): the flag does not exist there.
	r = run(ctx, ns, "start", "db", "--force")
	g.Expect(r.code).To(Equal(1))
	g.Expect(r.errOut).To(ContainSubstring("error: unknown flag: --force"))
	g.Expect(operations(g, ns)).To(HaveLen(1))
}

func TestSelectors(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := namespace(t)
	createVM(t, ns, "a", v1alpha1.RunPolicyManual, map[string]string{"tier": "web"})
	createVM(t, ns, "b", v1alpha1.RunPolicyManual, map[string]string{"tier": "web"})
	createVM(t, ns, "c", v1alpha1.RunPolicyManual, map[string]string{"tier": "db"})
	other := namespace(t)
	createVM(t, other, "elsewhere", v1alpha1.RunPolicyManual, map[string]string{"tier": "web"})
	deleteAll := func() {
		g.Expect(k8s.DeleteAllOf(ctx, &v1alpha1.VirtualMachineOperation{}, client.InNamespace(ns))).To(Succeed())
		g.Eventually(func() []v1alpha1.VirtualMachineOperation { return operations(g, ns) }).Should(BeEmpty())
	}

	r := run(ctx, ns, "stop", "-l", "tier=web")
	g.Expect(r.code).To(Equal(0), r.errOut)
	g.Expect(created(r.out)).To(HaveLen(2))
	g.Expect(vmNames(operations(g, ns))).To(Equal([]string{"a", "b"}))
	g.Expect(operations(g, other)).To(BeEmpty())
	deleteAll()

	r = run(ctx, ns, "restart", "--selector", "tier in (db)")
	g.Expect(r.code).To(Equal(0), r.errOut)
	g.Expect(vmNames(operations(g, ns))).To(Equal([]string{"c"}))
	deleteAll()

	r = run(ctx, ns, "restart", "--all")
	g.Expect(r.code).To(Equal(0), r.errOut)
	g.Expect(created(r.out)).To(HaveLen(3))
	g.Expect(vmNames(operations(g, ns))).To(Equal([]string{"a", "b", "c"}))
	deleteAll()

	for _, c := range []struct {
		args []string
		err  string
	}{
		{[]string{"stop", "-l", "tier=none"}, `error: no VirtualMachines in namespace "` + ns + `" match -l tier=none`},
		{[]string{"stop", "-l", "tier in (web"}, "error: -l tier in (web: "},
		{[]string{"stop", "a", "-l", "tier=web"}, "error: VirtualMachine names cannot be given together with -l or --all"},
		{[]string{"stop", "a", "--all"}, "error: VirtualMachine names cannot be given together with -l or --all"},
		{[]string{"stop", "--all", "-l", "tier=web"}, "[all selector] were all set"},
		{[]string{"stop"}, "error: name at least one VirtualMachine, or select them with -l SELECTOR or --all"},
		{[]string{"restart", "a", "--timeout", "1m"}, "error: --timeout applies to --wait only"},
	} {
		r := run(ctx, ns, c.args...)
		g.Expect(r.code).To(Equal(1), "%v", c.args)
		g.Expect(r.errOut).To(ContainSubstring(c.err), "%v", c.args)
		g.Expect(operations(g, ns)).To(BeEmpty(), "%v", c.args)
	}

	empty := namespace(t)
	r = run(ctx, empty, "start", "--all")
	g.Expect(r.code).To(Equal(1))
	g.Expect(r.errOut).To(Equal(`error: no VirtualMachines in namespace "` + empty + `"` + "\n"))
}

func TestUnknownVirtualMachine(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := namespace(t)
	createVM(t, ns, "web", v1alpha1.RunPolicyManual, nil)

	r := run(ctx, ns, "restart", "web", "nope", "gone")
	g.Expect(r.code).To(Equal(1))
	g.Expect(r.out).To(BeEmpty())
	g.Expect(r.errOut).To(Equal(`Error from server (NotFound): virtualmachines.runpolicy.io "nope" not found` + "\n" +
		`Error from server (NotFound): virtualmachines.runpolicy.io "gone" not found` + "\n"))
	// Nothing is created when one name is wrong, not even for the VMs that exist.
	g.Expect(operations(g, ns)).To(BeEmpty())

	// A kubevirt.io VirtualMachine of that name is not a runpolicy one.
	kvNS := namespace(t)
	kv := &kvv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: kvNS, Name: "web"},
		Spec: fixture.VM(kvNS, "web", "").Spec.VirtualMachineSpec}
	kv.Spec.RunStrategy = ptr.To(kvv1.RunStrategyHalted)
	g.Expect(k8s.Create(ctx, kv)).To(Succeed())
	for _, verb := range []string{"start", "status"} {
		r = run(ctx, kvNS, verb, "web")
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.errOut).To(Equal(`Error from server (NotFound): virtualmachines.runpolicy.io "web" not found` + "\n"))
	}
	g.Expect(operations(g, kvNS)).To(BeEmpty())
}

func TestWaitCompleted(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := namespace(t)
	createVM(t, ns, "web", v1alpha1.RunPolicyManual, nil)

	done := start(ctx, ns, "restart", "web", "--wait", "--timeout", "5m")
	op := awaitOperation(g, ns, "web")
	// Passing phases are not the end of the wait.
	op.Status.Phase = v1alpha1.OperationInProgress
	g.Expect(k8s.Status().Update(ctx, op)).To(Succeed())
	g.Consistently(done).WithTimeout(time.Second).ShouldNot(Receive())
	finish(g, op, v1alpha1.OperationCompleted, v1alpha1.OperationReasonCompleted, "Restart of VirtualMachine web completed")

	var r result
	g.Eventually(done).WithTimeout(time.Minute).Should(Receive(&r))
	g.Expect(r.code).To(Equal(0), r.errOut)
	g.Expect(r.errOut).To(BeEmpty())
	g.Expect(r.out).To(Equal(fmt.Sprintf("virtualmachineoperation.runpolicy.io/%s created\nvirtualmachineoperation.runpolicy.io/%s Completed\n", op.Name, op.Name)))
}

// An operation waiting for a start slot says so, once per place, while the plugin waits.
func TestWaitShowsTheStartSlotWait(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := namespace(t)
	createVM(t, ns, "web", v1alpha1.RunPolicyManual, nil)

	done := start(ctx, ns, "start", "web", "--wait")
	op := awaitOperation(g, ns, "web")
	place := func(ahead int) string {
		return fmt.Sprintf("Start of VirtualMachine web: Waiting for a start slot: %d VM(s) ahead in the queue", ahead)
	}
	finish(g, op, v1alpha1.OperationPending, v1alpha1.OperationReasonWaitingForStartSlot, place(2))
	finish(g, op, v1alpha1.OperationPending, v1alpha1.OperationReasonWaitingForStartSlot, place(1))
	op.Status.ObservedGeneration++ // a write that changes nothing the user sees
	g.Expect(k8s.Status().Update(ctx, op)).To(Succeed())
	finish(g, op, v1alpha1.OperationCompleted, v1alpha1.OperationReasonCompleted, "VirtualMachine web is running")

	var r result
	g.Eventually(done).WithTimeout(time.Minute).Should(Receive(&r))
	g.Expect(r.code).To(Equal(0), r.errOut)
	ref := "virtualmachineoperation.runpolicy.io/" + op.Name
	g.Expect(r.out).To(Equal(ref + " created\n" +
		ref + " Pending (WaitingForStartSlot): " + place(2) + "\n" +
		ref + " Pending (WaitingForStartSlot): " + place(1) + "\n" +
		ref + " Completed\n"))
}

func TestWaitFailedOrSuperseded(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := namespace(t)
	createVM(t, ns, "web", v1alpha1.RunPolicyManual, nil)
	createVM(t, ns, "db", v1alpha1.RunPolicyManual, nil)

	// One of two fails: the other's completion is still reported, and the exit status is non-zero.
	done := start(ctx, ns, "restart", "web", "db", "--wait")
	web, db := awaitOperation(g, ns, "web"), awaitOperation(g, ns, "db")
	superseded := "Superseded by the forced Stop web-stop-x7k2p of VirtualMachine web"
	finish(g, web, v1alpha1.OperationFailed, v1alpha1.OperationReasonSuperseded, superseded)
	finish(g, db, v1alpha1.OperationCompleted, v1alpha1.OperationReasonCompleted, "done")
	var r result
	g.Eventually(done).WithTimeout(time.Minute).Should(Receive(&r))
	g.Expect(r.code).To(Equal(1))
	g.Expect(r.out).To(ContainSubstring(fmt.Sprintf("virtualmachineoperation.runpolicy.io/%s Completed\n", db.Name)))
	g.Expect(r.out).NotTo(ContainSubstring(web.Name + " Completed"))
	g.Expect(r.errOut).To(Equal(fmt.Sprintf("error: virtualmachineoperation.runpolicy.io/%s Failed (Superseded): %s\n", web.Name, superseded)))

	// A refusal: its reason and message, as the operator wrote them.
	g.Expect(k8s.DeleteAllOf(ctx, &v1alpha1.VirtualMachineOperation{}, client.InNamespace(ns))).To(Succeed())
	done = start(ctx, ns, "start", "db", "--wait")
	db = awaitOperation(g, ns, "db")
	refusal := "VirtualMachine db is running: a Start needs a stopped VM; use a Restart operation"
	finish(g, db, v1alpha1.OperationFailed, v1alpha1.OperationReasonNotApplicableForVMPhase, refusal)
	g.Eventually(done).WithTimeout(time.Minute).Should(Receive(&r))
	g.Expect(r.code).To(Equal(1))
	g.Expect(r.out).To(Equal(fmt.Sprintf("virtualmachineoperation.runpolicy.io/%s created\n", db.Name)))
	g.Expect(r.errOut).To(Equal(fmt.Sprintf("error: virtualmachineoperation.runpolicy.io/%s Failed (NotApplicableForVMPhase): %s\n", db.Name, refusal)))
}

func TestWaitTimeoutAndDeletion(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := namespace(t)
	createVM(t, ns, "web", v1alpha1.RunPolicyManual, nil)
	createVM(t, ns, "db", v1alpha1.RunPolicyManual, nil)

	// Nobody writes a status: the wait ends at the timeout with a non-zero status and says where each stands.
	done := start(ctx, ns, "stop", "web", "db", "--wait", "--timeout", "3s")
	db := awaitOperation(g, ns, "db")
	db.Status.Phase = v1alpha1.OperationPending
	meta.SetStatusCondition(&db.Status.Conditions, metav1.Condition{Type: v1alpha1.OperationConditionCompleted,
		Status: metav1.ConditionFalse, Reason: v1alpha1.OperationReasonWaitingForOtherOperation, Message: "Waits for db-restart-abcde"})
	g.Expect(k8s.Status().Update(ctx, db)).To(Succeed())
	var r result
	g.Eventually(done).WithTimeout(time.Minute).Should(Receive(&r))
	g.Expect(r.code).To(Equal(1))
	web := awaitOperation(g, ns, "web")
	g.Expect(r.errOut).To(Equal(fmt.Sprintf(
		"error: timed out after 3s waiting for virtualmachineoperation.runpolicy.io/%s: no status yet (is the runpolicy operator running?)\n"+
			"error: timed out after 3s waiting for virtualmachineoperation.runpolicy.io/%s: phase Pending (WaitingForOtherOperation): Waits for db-restart-abcde\n",
		web.Name, db.Name)))

	// An operation deleted while waited for ends the wait for it with an error.
	g.Expect(k8s.DeleteAllOf(ctx, &v1alpha1.VirtualMachineOperation{}, client.InNamespace(ns))).To(Succeed())
	done = start(ctx, ns, "restart", "web", "--wait", "--timeout", "0")
	web = awaitOperation(g, ns, "web")
	g.Expect(k8s.Delete(ctx, web)).To(Succeed())
	g.Eventually(done).WithTimeout(time.Minute).Should(Receive(&r))
	g.Expect(r.code).To(Equal(1))
	g.Expect(r.errOut).To(Equal(fmt.Sprintf("error: virtualmachineoperation.runpolicy.io/%s was deleted before it finished (last seen: no status yet (is the runpolicy operator running?))\n", web.Name)))
}

func TestStatus(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := namespace(t)

	// Before the operator reported anything.
	createVM(t, ns, "fresh", v1alpha1.RunPolicyAlwaysOff, nil)
	r := run(ctx, ns, "status", "fresh")
	g.Expect(r.code).To(Equal(0), r.errOut)
	g.Expect(r.out).To(ContainSubstring("Policy:           AlwaysOff\n"))
	g.Expect(r.out).To(ContainSubstring("Phase:            <none> (not reported yet: is the runpolicy operator running?)\n"))
	g.Expect(r.out).To(ContainSubstring("Pending changes:  <unknown> (not reported yet)\n"))
	g.Expect(r.out).To(ContainSubstring("Shutdown history (newest first):\n  <none>\n"))
	g.Expect(r.out).To(ContainSubstring("Operations (newest first):\n  <none>\n"))

	// A VM the operator restarted after a guest reboot, whose spec changed since, with two operations.
	vm := createVM(t, ns, "web", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, nil)
	reset := v1alpha1.Shutdown{Source: v1alpha1.ShutdownGuestReset, Reason: "guest-reset", Action: v1alpha1.ShutdownRestarted,
		Time: &metav1.Time{Time: time.Date(2026, 11, 25, 10, 2, 3, 0, time.UTC)}, VMIUID: "6f1c2d8e-0b7a-4a55-9d2e-1f0e5a9b7c31"}
	poweroff := v1alpha1.Shutdown{Source: v1alpha1.ShutdownGuestShutdown, Reason: "guest-shutdown", Action: v1alpha1.ShutdownStayedStopped,
		Time: &metav1.Time{Time: time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)}, VMIUID: "0d3b9f7e-5c2a-4e1b-8a6d-2f4c6e8a0b13"}
	vm.Status = v1alpha1.VirtualMachineStatus{
		ObservedGeneration: vm.Generation,
		Phase:              v1alpha1.VirtualMachineRunning,
		PrintableStatus:    "Running",
		RestartCount:       2,
		LastShutdown:       &reset,
		ShutdownHistory:    []v1alpha1.Shutdown{reset, poweroff},
	}
	meta.SetStatusCondition(&vm.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady,
		Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonRunning, Message: "The VMI is running and ready"})
	meta.SetStatusCondition(&vm.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionAwaitingRestart,
		Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonChangesPending,
		Message: "The template changed since the running VMI was created; a restart (or a reboot inside the guest) applies it"})
	g.Expect(k8s.Status().Update(ctx, vm)).To(Succeed())
	r = run(ctx, ns, "restart", "web")
	g.Expect(r.code).To(Equal(0), r.errOut)
	first := awaitOperation(g, ns, "web")
	finish(g, first, v1alpha1.OperationFailed, v1alpha1.OperationReasonSuperseded, "Superseded")
	r = run(ctx, ns, "stop", "web", "--force")
	g.Expect(r.code).To(Equal(0), r.errOut)
	second := created(r.out)[0]
	// Another VM's operation is not listed.
	createVM(t, ns, "db", v1alpha1.RunPolicyManual, nil)
	g.Expect(run(ctx, ns, "start", "db").code).To(Equal(0))

	r = run(ctx, ns, "status", "web")
	g.Expect(r.code).To(Equal(0), r.errOut)
	g.Expect(r.errOut).To(BeEmpty())
	out := r.out
	t.Logf("kubectl runpolicy status web:\n%s", out)
	g.Expect(out).To(HavePrefix("Name:             web\nNamespace:        " + ns + "\n" +
		"Policy:           AlwaysOnUntilStoppedManually\nPhase:            Running (KubeVirt: Running)\n" +
		"Pending changes:  yes: The template changed since the running VMI was created; a restart (or a reboot inside the guest) applies it\n" +
		"Restarts:         2\n"))
	g.Expect(out).To(MatchRegexp(`(?m)^  Ready +True +Running +The VMI is running and ready$`))
	g.Expect(out).To(MatchRegexp(`(?m)^Shutdown history \(newest first\):\n  TIME +SOURCE +REASON +ACTION +VMI\n` +
		`  2026-11-25T10:02:03Z \(.+ ago\) +guest-reset +guest-reset +Restarted +6f1c2d8e-0b7a-4a55-9d2e-1f0e5a9b7c31\n` +
		`  2026-11-24T08:00:00Z \(.+ ago\) +guest-shutdown +guest-shutdown +StayedStopped +0d3b9f7e-5c2a-4e1b-8a6d-2f4c6e8a0b13\n` +
		`Operations`))
	// Both of web's operations, not db's (their order, newest first, is tested in status_test.go: here both may
	// have been created in the same second).
	g.Expect(out).To(MatchRegexp(`(?m)^Operations \(newest first\):\n  NAME +TYPE +FORCE +PHASE +REASON +AGE\n(  .*\n){2}\z`))
	g.Expect(out).To(MatchRegexp(`(?m)^  ` + second + ` +Stop +true +<none> +\S+$`))
	g.Expect(out).To(MatchRegexp(`(?m)^  ` + first.Name + ` +Restart +false +Failed +Superseded +\S+$`))
}
