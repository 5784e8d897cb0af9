//go:build !unit

package vmop_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vmop"
	"github.com/runpolicy/runpolicy/internal/startgate"
	"github.com/runpolicy/runpolicy/test/kubevirt"
)

const (
	start   = v1alpha1.OperationStart
	stop    = v1alpha1.OperationStop
	restart = v1alpha1.OperationRestart
)

// completed reads the Completed condition the way `kubectl wait --for=condition=Completed` does.
func completed(op *v1alpha1.VirtualMachineOperation) *metav1.Condition {
	return meta.FindStatusCondition(op.Status.Conditions, v1alpha1.OperationConditionCompleted)
}

// finished waits until the operation is Completed or Failed and returns it.
func finished(ctx context.Context, ns, name string) *v1alpha1.VirtualMachineOperation {
	var op *v1alpha1.VirtualMachineOperation
	EventuallyWithOffset(1, func(g Gomega) v1alpha1.VirtualMachineOperationPhase {
		op = getOp(ctx, ns, name)(g)
		return op.Status.Phase
	}).Should(BeElementOf(v1alpha1.OperationCompleted, v1alpha1.OperationFailed))
	return op
}

func expectCompleted(op *v1alpha1.VirtualMachineOperation) {
	expectCompletedWith(op, v1alpha1.OperationReasonCompleted)
}

// expectCompletedWith checks that op completed, its Completed condition with reason.
func expectCompletedWith(op *v1alpha1.VirtualMachineOperation, reason string) {
	ExpectWithOffset(1, op.Status.Phase).To(Equal(v1alpha1.OperationCompleted), "conditions: %+v", op.Status.Conditions)
	c := completed(op)
	ExpectWithOffset(1, c).NotTo(BeNil())
	ExpectWithOffset(1, c.Status).To(Equal(metav1.ConditionTrue))
	ExpectWithOffset(1, c.Reason).To(Equal(reason))
	ExpectWithOffset(1, op.Status.SignalSentTime).NotTo(BeNil())
	ExpectWithOffset(1, op.Status.CompletionTime).NotTo(BeNil())
	ExpectWithOffset(1, meta.IsStatusConditionTrue(op.Status.Conditions, v1alpha1.OperationConditionSignalSent)).To(BeTrue())
}

func expectFailed(op *v1alpha1.VirtualMachineOperation, reason string) *metav1.Condition {
	ExpectWithOffset(1, op.Status.Phase).To(Equal(v1alpha1.OperationFailed), "conditions: %+v", op.Status.Conditions)
	c := completed(op)
	ExpectWithOffset(1, c).NotTo(BeNil())
	ExpectWithOffset(1, c.Status).To(Equal(metav1.ConditionFalse))
	ExpectWithOffset(1, c.Reason).To(Equal(reason))
	ExpectWithOffset(1, op.Status.CompletionTime).NotTo(BeNil())
	ExpectWithOffset(1, meta.IsStatusConditionTrue(op.Status.Conditions, v1alpha1.OperationConditionSignalSent)).To(BeFalse())
	return c
}

// endedForced waits until KubeVirt had the VMI's launcher pod deleted and tells whether it was without a grace
// period, i.e. whether the signal reached virt-api with grace period 0 (the audit log has no request bodies).
func endedForced(uid types.UID) bool {
	var forced bool
	EventuallyWithOffset(1, func() bool {
		f, ok := node.EndedForced(uid)
		forced = f
		return ok
	}).Should(BeTrue(), "the VMI's launcher pod was never deleted")
	return forced
}

// underway is virt-api's answer to a signal while it still finishes the previous one: "unable to complete request:
// stop/start already underway", an internal error (HTTP 500, pkg/virt-api/rest/lifecycle.go getChangeRequestJson).
const underway = http.StatusInternalServerError

var _ = Describe("VirtualMachineOperation", func() {
	var ns string
	BeforeEach(func(ctx SpecContext) { ns = newNamespace(ctx) })

	// prepare brings a new VM into the state an operation of type t starts from: Stopped for Start, Running for
	// Stop and Restart, or whatever the policy forces (AlwaysOff never runs, AlwaysOn always does).
	prepare := func(ctx context.Context, p v1alpha1.RunPolicy, t v1alpha1.VirtualMachineOperationType) (running bool) {
		createVM(ctx, ns, "vm1", p)
		switch {
		case p == v1alpha1.RunPolicyAlwaysOff:
			stoppedVM(ctx, ns, "vm1")
			return false
		case p == v1alpha1.RunPolicyAlwaysOn:
			runningVMI(ctx, ns, "vm1")
			return true
		case t == start && p == v1alpha1.RunPolicyManual:
			stoppedVM(ctx, ns, "vm1")
			return false
		case t == start: // AlwaysOnUntilStoppedManually starts by itself: stop it through KubeVirt
			runningVMI(ctx, ns, "vm1")
			Expect(lc.Stop(ctx, ns, "vm1", false)).To(Succeed())
			stoppedVM(ctx, ns, "vm1")
			return false
		default:
			if p == v1alpha1.RunPolicyManual {
				Eventually(vmPhase(ctx, ns, "vm1")).Should(Equal(v1alpha1.VirtualMachineStopped))
				Expect(lc.Start(ctx, ns, "vm1")).To(Succeed())
			}
			runningVMI(ctx, ns, "vm1")
			return true
		}
	}

	DescribeTable("policy × operation × force",
		func(ctx SpecContext, p v1alpha1.RunPolicy, t v1alpha1.VirtualMachineOperationType, force bool, wantReason string) {
			running := prepare(ctx, p, t)
			var before types.UID
			if running {
				before = getVMI(ctx, ns, "vm1").UID
			}
			calls, vmis := len(node.CallsFor(ns, "vm1")), node.VMIsCreated(ns, "vm1")

			createOp(ctx, ns, "op", "vm1", t, force)
			op := finished(ctx, ns, "op")

			if wantReason != "" {
				By("failing with a reason and a message that names the VM, the policy and what would work")
				c := expectFailed(op, wantReason)
				Expect(c.Message).To(ContainSubstring("vm1"))
				Expect(c.Message).To(ContainSubstring(string(p)))
				Expect(c.Message).To(Or(ContainSubstring("use a"), ContainSubstring("set spec.runPolicy")))
				By("sending nothing to KubeVirt")
				Consistently(func() int { return len(node.CallsFor(ns, "vm1")) }, "1s").Should(Equal(calls))
				Expect(node.VMIsCreated(ns, "vm1")).To(Equal(vmis))
				return
			}

			expectCompleted(op)
			By("sending exactly one accepted signal, with grace period 0 when forced")
			action := strings.ToLower(string(t))
			var accepted []kubevirt.Call
			for _, c := range node.CallsFor(ns, "vm1")[calls:] {
				if c.Code == http.StatusAccepted {
					accepted = append(accepted, c)
					continue
				}
				// KubeVirt refuses a signal while it still finishes the previous one (the stop of the set-up);
				// such a refusal changes nothing and is retried. No other refusal may happen.
				Expect(c.Code).To(Equal(underway), "unexpected refusal of %s", c.Action)
			}
			Expect(accepted).To(HaveLen(1))
			call := accepted[0]
			Expect(call.Action).To(Equal(action))
			if running && t != start {
				Expect(endedForced(before)).To(Equal(force))
			}

			By("reaching the target state in KubeVirt, and staying there")
			switch t {
			case start:
				vmi := runningVMI(ctx, ns, "vm1")
				Expect(vmi.CreationTimestamp.Time).NotTo(BeTemporally("<", op.Status.SignalSentTime.Truncate(time.Second)))
				Consistently(func() int { return node.VMIsCreated(ns, "vm1") }, "1s").Should(Equal(vmis + 1))
			case stop:
				stoppedVM(ctx, ns, "vm1")
				// AlwaysOnUntilStoppedManually: the VM controller must take this for a user stop, not restart it.
				Consistently(vmPhase(ctx, ns, "vm1"), "2s").Should(Equal(v1alpha1.VirtualMachineStopped))
				Expect(node.VMIsCreated(ns, "vm1")).To(Equal(vmis))
			case restart:
				vmi := runningVMI(ctx, ns, "vm1")
				Expect(vmi.UID).NotTo(Equal(before))
				Expect(op.Status.TargetVMIUID).To(Equal(string(before)))
				Consistently(func() int { return node.VMIsCreated(ns, "vm1") }, "1s").Should(Equal(vmis + 1))
			}
		},
		func(p v1alpha1.RunPolicy, t v1alpha1.VirtualMachineOperationType, force bool, reason string) string {
			out := "Completed"
			if reason != "" {
				out = "Failed " + reason
			}
			return fmt.Sprintf("%s %s force=%v → %s", p, t, force, out)
		},
		Entry(nil, v1alpha1.RunPolicyAlwaysOff, start, false, v1alpha1.OperationReasonNotApplicableForRunPolicy),
		Entry(nil, v1alpha1.RunPolicyAlwaysOff, stop, false, v1alpha1.OperationReasonNotApplicableForRunPolicy),
		Entry(nil, v1alpha1.RunPolicyAlwaysOff, stop, true, v1alpha1.OperationReasonNotApplicableForRunPolicy),
		Entry(nil, v1alpha1.RunPolicyAlwaysOff, restart, false, v1alpha1.OperationReasonNotApplicableForRunPolicy),
		Entry(nil, v1alpha1.RunPolicyAlwaysOff, restart, true, v1alpha1.OperationReasonNotApplicableForRunPolicy),
		Entry(nil, v1alpha1.RunPolicyAlwaysOn, start, false, v1alpha1.OperationReasonNotApplicableForRunPolicy),
		Entry(nil, v1alpha1.RunPolicyAlwaysOn, stop, false, v1alpha1.OperationReasonNotApplicableForRunPolicy),
		Entry(nil, v1alpha1.RunPolicyAlwaysOn, stop, true, v1alpha1.OperationReasonNotApplicableForRunPolicy),
		Entry(nil, v1alpha1.RunPolicyAlwaysOn, restart, false, ""),
		Entry(nil, v1alpha1.RunPolicyAlwaysOn, restart, true, ""),
		Entry(nil, v1alpha1.RunPolicyManual, start, false, ""),
		Entry(nil, v1alpha1.RunPolicyManual, stop, false, ""),
		Entry(nil, v1alpha1.RunPolicyManual, stop, true, ""),
		Entry(nil, v1alpha1.RunPolicyManual, restart, false, ""),
		Entry(nil, v1alpha1.RunPolicyManual, restart, true, ""),
		Entry(nil, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, start, false, ""),
		Entry(nil, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, stop, false, ""),
		Entry(nil, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, stop, true, ""),
		Entry(nil, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, restart, false, ""),
		Entry(nil, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, restart, true, ""),
	)

	It("refuses operations on a VM in the wrong phase, and on a VM that does not exist", func(ctx SpecContext) {
		createVM(ctx, ns, "vm1", v1alpha1.RunPolicyManual)
		stoppedVM(ctx, ns, "vm1")
		createOp(ctx, ns, "stop", "vm1", stop, false)
		createOp(ctx, ns, "restart", "vm1", restart, true)
		createOp(ctx, ns, "ghost", "nope", start, false)

		c := expectFailed(finished(ctx, ns, "stop"), v1alpha1.OperationReasonNotApplicableForVMPhase)
		Expect(c.Message).To(And(ContainSubstring("vm1"), ContainSubstring("Manual"), ContainSubstring("Stopped")))
		c = expectFailed(finished(ctx, ns, "restart"), v1alpha1.OperationReasonNotApplicableForVMPhase)
		Expect(c.Message).To(ContainSubstring("use a Start operation"))
		c = expectFailed(finished(ctx, ns, "ghost"), v1alpha1.OperationReasonVirtualMachineNotFound)
		Expect(c.Message).To(ContainSubstring("nope"))
		Expect(node.CallsFor(ns, "vm1")).To(BeEmpty())
		Expect(node.CallsFor(ns, "nope")).To(BeEmpty())
	})

	It("refuses a Migrate of a stopped VM, of an AlwaysOff VM, and of a VMI KubeVirt does not call live-migratable", func(ctx SpecContext) {
		createVM(ctx, ns, "stopped", v1alpha1.RunPolicyManual)
		stoppedVM(ctx, ns, "stopped")
		createVM(ctx, ns, "off", v1alpha1.RunPolicyAlwaysOff)
		createVM(ctx, ns, "running", v1alpha1.RunPolicyManual)
		Eventually(vmPhase(ctx, ns, "running")).Should(Equal(v1alpha1.VirtualMachineStopped))
		Expect(lc.Start(ctx, ns, "running")).To(Succeed())
		vmi := runningVMI(ctx, ns, "running")
		Expect(vmi.Status.Conditions).NotTo(ContainElement(HaveField("Type", kvv1.VirtualMachineInstanceIsMigratable)),
			"the simulated virt-handler reports no LiveMigratable condition")
		createOp(ctx, ns, "migrate-stopped", "stopped", v1alpha1.OperationMigrate, false)
		createOp(ctx, ns, "migrate-off", "off", v1alpha1.OperationMigrate, false)
		createOp(ctx, ns, "migrate-running", "running", v1alpha1.OperationMigrate, false)

		c := expectFailed(finished(ctx, ns, "migrate-stopped"), v1alpha1.OperationReasonNotApplicableForVMPhase)
		Expect(c.Message).To(And(ContainSubstring("stopped"), ContainSubstring("only a running VM can be migrated")))
		c = expectFailed(finished(ctx, ns, "migrate-off"), v1alpha1.OperationReasonNotApplicableForRunPolicy)
		Expect(c.Message).To(ContainSubstring("cannot be migrated"))
		c = expectFailed(finished(ctx, ns, "migrate-running"), v1alpha1.OperationReasonNotMigratable)
		Expect(c.Message).To(ContainSubstring("no LiveMigratable condition"))
		var migrations kvv1.VirtualMachineInstanceMigrationList
		Expect(k8s.List(ctx, &migrations, client.InNamespace(ns))).To(Succeed())
		Expect(migrations.Items).To(BeEmpty())
		Expect(getVMI(ctx, ns, "running").UID).To(Equal(vmi.UID))
	})

	It("evicts a VM KubeVirt cannot live-migrate by restarting it where its policy starts it again, and refuses under Manual and AlwaysOff", func(ctx SpecContext) {
		vmis := map[string]*kvv1.VirtualMachineInstance{}
		for name, p := range map[string]v1alpha1.RunPolicy{"on": v1alpha1.RunPolicyAlwaysOn,
			"until-stopped": v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, "manual": v1alpha1.RunPolicyManual} {
			createVM(ctx, ns, name, p)
			if p == v1alpha1.RunPolicyManual {
				Eventually(vmPhase(ctx, ns, name)).Should(Equal(v1alpha1.VirtualMachineStopped))
				Expect(lc.Start(ctx, ns, name)).To(Succeed())
			}
			vmis[name] = runningVMI(ctx, ns, name)
			Expect(vmis[name].Status.Conditions).NotTo(ContainElement(HaveField("Type", kvv1.VirtualMachineInstanceIsMigratable)),
				"the simulated virt-handler reports no LiveMigratable condition: KubeVirt cannot live-migrate the VMI")
		}
		createVM(ctx, ns, "off", v1alpha1.RunPolicyAlwaysOff)
		stoppedVM(ctx, ns, "off")
		for _, name := range []string{"on", "until-stopped", "manual", "off"} {
			createOp(ctx, ns, "evict-"+name, name, v1alpha1.OperationEvict, false)
		}

		By("AlwaysOn and AlwaysOnUntilStoppedManually: one restart each, the choice and both nodes recorded")
		for _, name := range []string{"on", "until-stopped"} {
			op := finished(ctx, ns, "evict-"+name)
			// One node: the scheduler had no other.
			expectCompletedWith(op, v1alpha1.OperationReasonEvictedToSameNode)
			Expect(completed(op).Message).To(And(ContainSubstring(name), ContainSubstring("cordon")))
			Expect(op.Status.Eviction).To(HaveValue(And(HaveField("Method", v1alpha1.EvictionRestart),
				HaveField("SourceNode", vmis[name].Status.NodeName), HaveField("TargetNode", vmis[name].Status.NodeName))))
			Expect(op.Status.Migration).To(BeNil())
			Expect(op.Status.TargetVMIUID).To(Equal(string(vmis[name].UID)))
			vmi := runningVMI(ctx, ns, name)
			Expect(vmi.UID).NotTo(Equal(vmis[name].UID))
			Expect(restartCalls(ns, name)).To(ConsistOf(HaveField("Code", http.StatusAccepted)))
			Consistently(vmPhase(ctx, ns, name), "2s").Should(Equal(v1alpha1.VirtualMachineRunning),
				"the restart is not a user's stop: AlwaysOnUntilStoppedManually keeps the VM running")
		}

		By("Manual: refused, since the VM would stay stopped; AlwaysOff: refused by the policy")
		c := expectFailed(finished(ctx, ns, "evict-manual"), v1alpha1.OperationReasonNotApplicableForRunPolicy)
		Expect(c.Message).To(And(ContainSubstring("manual"), ContainSubstring("Manual"), ContainSubstring("no LiveMigratable condition"),
			ContainSubstring("use a Restart operation")))
		Expect(node.CallsFor(ns, "manual")).To(HaveEach(HaveField("Action", Not(Equal("restart")))))
		Expect(getVMI(ctx, ns, "manual").UID).To(Equal(vmis["manual"].UID))
		c = expectFailed(finished(ctx, ns, "evict-off"), v1alpha1.OperationReasonNotApplicableForRunPolicy)
		Expect(c.Message).To(ContainSubstring("cannot be evicted"))
		var migrations kvv1.VirtualMachineInstanceMigrationList
		Expect(k8s.List(ctx, &migrations, client.InNamespace(ns))).To(Succeed())
		Expect(migrations.Items).To(BeEmpty())
	})

	It("rejects force with Migrate and Evict, and migration options with another type, at admission", func(ctx SpecContext) {
		for _, t := range []v1alpha1.VirtualMachineOperationType{v1alpha1.OperationMigrate, v1alpha1.OperationEvict} {
			op := &v1alpha1.VirtualMachineOperation{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "op"},
				Spec:       v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: "vm1", Type: t, Force: true},
			}
			Expect(k8s.Create(ctx, op)).To(MatchError(ContainSubstring("spec.force is not allowed with type Start, Migrate or Evict")), string(t))
		}
		op := &v1alpha1.VirtualMachineOperation{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "op"},
			Spec: v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: "vm1", Type: stop,
				Migration: &v1alpha1.MigrationOptions{NodeSelector: map[string]string{"zone": "b"}}},
		}
		Expect(k8s.Create(ctx, op)).To(MatchError(ContainSubstring("spec.migration is allowed with type Migrate or Evict only")))
		op.Spec.Type = v1alpha1.OperationEvict
		Expect(k8s.Create(ctx, op)).To(Succeed(), "an Evict's live migration may be given a node selector")
	})

	It("rejects force with Start at admission", func(ctx SpecContext) {
		op := &v1alpha1.VirtualMachineOperation{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "op"},
			Spec:       v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: "vm1", Type: start, Force: true},
		}
		Expect(k8s.Create(ctx, op)).To(MatchError(ContainSubstring("spec.force is not allowed with type Start")))
	})

	It("runs concurrent operations one at a time, oldest first, and fails those that can no longer apply", func(ctx SpecContext) {
		createVM(ctx, ns, "vm1", v1alpha1.RunPolicyManual)
		Eventually(vmPhase(ctx, ns, "vm1")).Should(Equal(v1alpha1.VirtualMachineStopped))
		Expect(lc.Start(ctx, ns, "vm1")).To(Succeed())
		first := runningVMI(ctx, ns, "vm1")
		vmis := node.VMIsCreated(ns, "vm1")

		// Created back to back (the same second, most likely): the names give the order.
		createOp(ctx, ns, "op-1-restart", "vm1", restart, false)
		createOp(ctx, ns, "op-2-stop", "vm1", stop, false)
		createOp(ctx, ns, "op-3-restart", "vm1", restart, false)
		createOp(ctx, ns, "op-4-start", "vm1", start, false)

		By("never having two operations of the VM in progress at once")
		names := []string{"op-1-restart", "op-2-stop", "op-3-restart", "op-4-start"}
		Eventually(func(g Gomega) int {
			unfinished, inProgress := 0, 0
			for _, n := range names {
				op := getOp(ctx, ns, n)(g)
				switch op.Status.Phase {
				case v1alpha1.OperationInProgress:
					inProgress++
					unfinished++
				case v1alpha1.OperationPending, "":
					unfinished++
				}
			}
			g.Expect(inProgress).To(BeNumerically("<=", 1))
			return unfinished
		}).WithPolling(20 * time.Millisecond).Should(BeZero())

		expectCompleted(finished(ctx, ns, "op-1-restart"))
		expectCompleted(finished(ctx, ns, "op-2-stop"))
		c := expectFailed(finished(ctx, ns, "op-3-restart"), v1alpha1.OperationReasonNotApplicableForVMPhase)
		Expect(c.Message).To(ContainSubstring("use a Start operation"))
		expectCompleted(finished(ctx, ns, "op-4-start"))

		By("KubeVirt accepted restart, stop, start — in that order, once each")
		var actions []string
		for _, call := range node.CallsFor(ns, "vm1") {
			if call.Code != http.StatusAccepted {
				// A start sent while KubeVirt still finishes the previous stop is refused and retried; that
				// refusal changed nothing, and no other refusal may happen.
				Expect(call.Code).To(Equal(underway), "unexpected refusal of %s", call.Action)
				continue
			}
			actions = append(actions, call.Action)
		}
		Expect(actions).To(Equal([]string{"start", "restart", "stop", "start"})) // the first start is the test's own
		vmi := runningVMI(ctx, ns, "vm1")
		Expect(vmi.UID).NotTo(Equal(first.UID))
		Expect(node.VMIsCreated(ns, "vm1")).To(Equal(vmis + 2))
	})

	It("lets a forced Stop supersede pending operations", func(ctx SpecContext) {
		createVM(ctx, ns, "vm1", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)
		running := runningVMI(ctx, ns, "vm1")
		vmis := node.VMIsCreated(ns, "vm1")

		By("queueing a Restart, a graceful Stop and a forced Stop while the operator is down")
		suiteOp.stop()
		createOp(ctx, ns, "op-1-restart", "vm1", restart, false)
		createOp(ctx, ns, "op-2-stop", "vm1", stop, false)
		createOp(ctx, ns, "op-3-force-stop", "vm1", stop, true)
		suiteOp = startOperator(lc, nil)

		for _, n := range []string{"op-1-restart", "op-2-stop"} {
			c := expectFailed(finished(ctx, ns, n), v1alpha1.OperationReasonSuperseded)
			Expect(c.Message).To(ContainSubstring("op-3-force-stop"))
		}
		expectCompleted(finished(ctx, ns, "op-3-force-stop"))
		stoppedVM(ctx, ns, "vm1")

		By("sending only the forced stop")
		calls := node.CallsFor(ns, "vm1")
		Expect(calls).To(HaveLen(1))
		Expect(calls[0].Action).To(Equal("stop"))
		Expect(endedForced(running.UID)).To(BeTrue())
		Consistently(vmPhase(ctx, ns, "vm1"), "2s").Should(Equal(v1alpha1.VirtualMachineStopped))
		Expect(node.VMIsCreated(ns, "vm1")).To(Equal(vmis))
	})

	It("fails an operation whose target state KubeVirt never reports, after the timeout", func(ctx SpecContext) {
		suiteOp.stop()
		suiteOp = startOperator(lc, nil, func(r *vmop.Reconciler) { r.Timeout = 3 * time.Second })
		DeferCleanup(func() { suiteOp.stop(); suiteOp = startOperator(lc, nil) })

		createVM(ctx, ns, "vm1", v1alpha1.RunPolicyManual)
		stoppedVM(ctx, ns, "vm1")
		node.FailNextStarts(ns, "vm1", 100) // every VMI fails before it runs: Manual leaves the VM stopped
		createOp(ctx, ns, "start", "vm1", start, false)
		op := finished(ctx, ns, "start")
		Expect(op.Status.Phase).To(Equal(v1alpha1.OperationFailed), "conditions: %+v", op.Status.Conditions)
		c := completed(op)
		Expect(c.Reason).To(Equal(v1alpha1.OperationReasonTimedOut))
		Expect(c.Message).To(And(ContainSubstring("start request"), ContainSubstring("VirtualMachine vm1"), ContainSubstring("3s")))
		By("after KubeVirt had accepted the signal, once")
		Expect(meta.IsStatusConditionTrue(op.Status.Conditions, v1alpha1.OperationConditionSignalSent)).To(BeTrue())
		Expect(op.Status.CompletionTime.Sub(op.Status.SignalSentTime.Time)).To(BeNumerically(">=", 3*time.Second))
		Expect(node.CallsFor(ns, "vm1")).To(HaveLen(1))

		By("freeing the VM's queue for the next operation")
		node.FailNextStarts(ns, "vm1", 0)
		createOp(ctx, ns, "start-again", "vm1", start, false)
		expectCompleted(finished(ctx, ns, "start-again"))
	})

	It("keeps finished operations for audit, at most max per VM, and removes them after the TTL", func(ctx SpecContext) {
		suiteOp.stop()
		suiteOp = startOperator(lc, nil, func(r *vmop.Reconciler) { r.TTL, r.MaxPerVM = 5*time.Second, 2 })
		DeferCleanup(func() { suiteOp.stop(); suiteOp = startOperator(lc, nil) })

		createVM(ctx, ns, "vm1", v1alpha1.RunPolicyManual)
		stoppedVM(ctx, ns, "vm1")
		createVM(ctx, ns, "vm2", v1alpha1.RunPolicyManual)
		stoppedVM(ctx, ns, "vm2")
		for i := range 4 {
			createOp(ctx, ns, fmt.Sprintf("vm1-stop-%d", i), "vm1", stop, false) // fails: nothing to stop
		}
		createOp(ctx, ns, "vm2-stop", "vm2", stop, false)
		count := func(vmName string) func(Gomega) int {
			return func(g Gomega) int {
				list := &v1alpha1.VirtualMachineOperationList{}
				g.Expect(k8s.List(ctx, list, client.InNamespace(ns))).To(Succeed())
				n := 0
				for _, op := range list.Items {
					if op.Spec.VirtualMachineName == vmName {
						g.Expect(op.Status.Phase).To(Equal(v1alpha1.OperationFailed))
						n++
					}
				}
				return n
			}
		}
		By("keeping the newest two of vm1 and the one of vm2")
		Eventually(count("vm1")).Should(Equal(2))
		Expect(count("vm2")(Default)).To(Equal(1))
		By("removing all of them once the TTL passed")
		Eventually(count("vm1")).Should(BeZero())
		Eventually(count("vm2")).Should(BeZero())
	})

	It("stops a VMI that starts after its Stop was sent, and completes once the VM is stopped", func(ctx SpecContext) {
		// virt-controller serves Start requests from its informer's copy of the VM: a Start a Stop removed through
		// the API server may still be served after the Stop saw the VM stopped (test/e2e "A Stop operation during
		// runpolicy's restart" met it in CI). A start that overtakes the Stop looks the same to the Stop.
		createVM(ctx, ns, "vm1", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)
		first := runningVMI(ctx, ns, "vm1")
		vmis := node.VMIsCreated(ns, "vm1")
		suiteOp.stop()
		started := make(chan struct{})
		op := startOperator(overtakingLifecycle{Interface: lc, started: started}, nil)
		DeferCleanup(func() { op.stop(); suiteOp = startOperator(lc, nil) })
		createOp(ctx, ns, "stop", "vm1", stop, false)
		Eventually(started, time.Minute).Should(BeClosed())

		By("stopping the VMI that started after the signal too")
		done := finished(ctx, ns, "stop")
		expectCompleted(done)
		Expect(done.Status.TargetVMIUID).To(Equal(string(first.UID)))
		stoppedVM(ctx, ns, "vm1")
		Consistently(vmPhase(ctx, ns, "vm1"), "2s").Should(Equal(v1alpha1.VirtualMachineStopped))
		Expect(node.VMIsCreated(ns, "vm1")).To(Equal(vmis+1), "the overtaking start's VMI only")
		var stops []kubevirt.Call
		for _, c := range node.CallsFor(ns, "vm1") {
			if c.Action == "stop" && c.Code == http.StatusAccepted {
				stops = append(stops, c)
			}
		}
		Expect(stops).To(HaveLen(2), "one stop per VMI")
	})

	It("has Start and Restart operations wait for a start slot under --max-concurrent-starts, in order", func(ctx SpecContext) {
		// The VM controller of this suite runs without a cap: the test holds the one slot for another VM itself,
		// as the VM controller does for a VM it sees starting.
		gate := &startgate.Gate{Max: 1}
		gate.Prime(nil)
		holder := types.NamespacedName{Namespace: ns, Name: "holder"}
		gate.Observe(holder, startgate.Starting, false)
		suiteOp.stop()
		op := startOperator(lc, nil, func(r *vmop.Reconciler) { r.Starts = gate })
		DeferCleanup(func() { op.stop(); suiteOp = startOperator(lc, nil) })

		createVM(ctx, ns, "stopped", v1alpha1.RunPolicyManual)
		stoppedVM(ctx, ns, "stopped")
		createVM(ctx, ns, "running", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)
		before := runningVMI(ctx, ns, "running")
		vmis := node.VMIsCreated(ns, "running")

		waiting := func(name string, place int) func(Gomega) {
			return func(g Gomega) {
				c := completed(getOp(ctx, ns, name)(g))
				g.Expect(c).NotTo(BeNil())
				g.Expect(c.Reason).To(Equal(v1alpha1.OperationReasonWaitingForStartSlot))
				g.Expect(c.Message).To(And(ContainSubstring(fmt.Sprintf("%d VM(s) ahead", place-1)),
					ContainSubstring("at most 1 VMs start at once"), ContainSubstring("starting now: "+holder.String())))
			}
		}
		By("a Start waits at place 1 while another VM holds the slot")
		createOp(ctx, ns, "start", "stopped", start, false)
		Eventually(waiting("start", 1)).Should(Succeed())
		By("a Restart created after it waits at place 2, its VM running")
		// Operations of the same startOrder go by creation time, which the API server keeps to the second.
		created := getOp(ctx, ns, "start")(Default).CreationTimestamp.Time
		Eventually(func() time.Time { return time.Now().Truncate(time.Second) }).Should(BeTemporally(">", created))
		createOp(ctx, ns, "restart", "running", restart, false)
		Eventually(waiting("restart", 2)).Should(Succeed())
		Expect(completed(getOp(ctx, ns, "restart")(Default)).Message).To(ContainSubstring("keeps running until then"))
		Consistently(func(g Gomega) {
			g.Expect(node.CallsFor(ns, "stopped")).To(BeEmpty())
			g.Expect(node.CallsFor(ns, "running")).To(BeEmpty())
			g.Expect(getOp(ctx, ns, "start")(g).Status.Phase).To(Equal(v1alpha1.OperationPending))
		}, "3s").Should(Succeed())
		Expect(getVMI(ctx, ns, "running").UID).To(Equal(before.UID))

		By("the holder runs: the Start goes, then the Restart")
		gate.Observe(holder, startgate.Running, false)
		expectCompleted(finished(ctx, ns, "start"))
		runningVMI(ctx, ns, "stopped")
		expectCompleted(finished(ctx, ns, "restart"))
		Expect(runningVMI(ctx, ns, "running").UID).NotTo(Equal(before.UID))
		Expect(node.VMIsCreated(ns, "running")).To(Equal(vmis + 1))
		startSent := getOp(ctx, ns, "start")(Default).Status.SignalSentTime
		restartSent := getOp(ctx, ns, "restart")(Default).Status.SignalSentTime
		Expect(restartSent.Time).NotTo(BeTemporally("<", startSent.Time), "the Restart waited behind the Start")
		Expect(node.CallsFor(ns, "stopped")).To(HaveLen(1))
		Expect(node.CallsFor(ns, "running")).To(HaveLen(1))
	})

	Context("exactly once across an operator restart", func() {
		var before *kvv1.VirtualMachineInstance
		var vmis int
		BeforeEach(func(ctx SpecContext) {
			// AlwaysOnUntilStoppedManually: an Evict of a VMI KubeVirt cannot live-migrate restarts it.
			createVM(ctx, ns, "vm1", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)
			before = runningVMI(ctx, ns, "vm1")
			vmis = node.VMIsCreated(ns, "vm1")
		})

		// finishAfterRestart restarts the operator normally and checks the operation (a Restart, or an Evict that
		// restarts the VM) finished with one signal.
		finishAfterRestart := func(ctx context.Context, t v1alpha1.VirtualMachineOperationType) {
			suiteOp = startOperator(lc, nil)
			op := finished(ctx, ns, "op")
			if t == v1alpha1.OperationEvict {
				expectCompletedWith(op, v1alpha1.OperationReasonEvictedToSameNode)
				Expect(op.Status.Eviction).To(HaveValue(HaveField("Method", v1alpha1.EvictionRestart)))
			} else {
				expectCompleted(op)
			}
			Expect(op.Status.TargetVMIUID).To(Equal(string(before.UID)))
			Expect(restartCalls(ns, "vm1")).To(HaveLen(1))
			Consistently(func() int { return node.VMIsCreated(ns, "vm1") }, "2s").Should(Equal(vmis + 1))
			Expect(restartCalls(ns, "vm1")).To(HaveLen(1))
			Expect(runningVMI(ctx, ns, "vm1").UID).NotTo(Equal(before.UID))
		}

		It("finishes a Restart that was InProgress when the operator stopped", func(ctx SpecContext) {
			suiteOp.stop()
			cr := &crash{}
			cr.op = startOperator(lc, func(c client.Client) client.Client {
				return crashingClient{Client: c, c: cr, crashAfterInProgress: true}
			})
			createOp(ctx, ns, "op", "vm1", restart, false)
			Eventually(cr.op.done).Should(BeClosed())

			By("leaving the operation InProgress while no operator runs, and KubeVirt restarting the VM meanwhile")
			Expect(getOp(ctx, ns, "op")(Default).Status.Phase).To(Equal(v1alpha1.OperationInProgress))
			Eventually(func() int { return node.VMIsCreated(ns, "vm1") }).Should(Equal(vmis + 1))
			runningVMI(ctx, ns, "vm1")
			Expect(getOp(ctx, ns, "op")(Default).Status.Phase).To(Equal(v1alpha1.OperationInProgress))

			finishAfterRestart(ctx, restart)
		})

		DescribeTable("does not restart twice when the operator died between the signal and the status write",
			func(ctx SpecContext, t v1alpha1.VirtualMachineOperationType) {
				suiteOp.stop()
				cr := &crash{}
				cr.op = startOperator(crashingLifecycle{Interface: lc, c: cr}, func(c client.Client) client.Client {
					return crashingClient{Client: c, c: cr}
				})
				createOp(ctx, ns, "op", "vm1", t, false)
				Eventually(cr.op.done).Should(BeClosed())

				By("leaving the operation Pending with its target recorded, though KubeVirt took the restart")
				op := getOp(ctx, ns, "op")(Default)
				Expect(op.Status.Phase).To(Equal(v1alpha1.OperationPending))
				Expect(op.Status.TargetVMIUID).To(Equal(string(before.UID)))
				Expect(restartCalls(ns, "vm1")).To(HaveLen(1))
				Eventually(func() int { return node.VMIsCreated(ns, "vm1") }).Should(Equal(vmis + 1))

				finishAfterRestart(ctx, t)
			},
			Entry("Restart", restart),
			Entry("Evict of a VMI KubeVirt cannot live-migrate", v1alpha1.OperationEvict),
		)
	})
})
