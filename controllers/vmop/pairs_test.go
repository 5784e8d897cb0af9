//go:build !unit

package vmop_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/cluster"
)

// heldProbe is the ConfigMap name the hold also refuses, so that a test can see the policy in force (a dry-run
// create) before it relies on it.
const heldProbe = "kubevirt-held"

// holdKubeVirt keeps real KubeVirt from finishing what it was asked in namespace ns, so that an operation stays in
// flight for as long as a test needs: a ValidatingAdmissionPolicy refuses virt-controller the deletion of pods (a
// stopping VMI stays being deleted, its launcher pod running, and KubeVirt keeps the Stop request, and the Start
// behind it, while the VMI exists) and the creation of VMIs (a Start request stays pending). The returned release
// lifts it; virt-controller's retries then finish the work.
func holdKubeVirt(ctx context.Context, ns string) (release func()) {
	name := "hold-" + ns
	rule := func(op admissionv1.OperationType, group, resource string) admissionv1.NamedRuleWithOperations {
		return admissionv1.NamedRuleWithOperations{RuleWithOperations: admissionv1.RuleWithOperations{
			Operations: []admissionv1.OperationType{op},
			Rule:       admissionv1.Rule{APIGroups: []string{group}, APIVersions: []string{"v1"}, Resources: []string{resource}},
		}}
	}
	policy := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionv1.Fail),
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{
				rule(admissionv1.Delete, "", "pods"),
				rule(admissionv1.Create, kvv1.SchemeGroupVersion.Group, "virtualmachineinstances"),
				rule(admissionv1.Create, "", "configmaps"),
			}},
			MatchConditions: []admissionv1.MatchCondition{{Name: "held", Expression: fmt.Sprintf(
				`request.resource.resource == "configmaps" ? object.metadata.name == %q : request.userInfo.username == %q`,
				heldProbe, cluster.ControllerServiceAccount)}},
			Validations: []admissionv1.Validation{{Expression: "false", Message: "held by the test"}},
		},
	}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        name,
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
			MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{corev1.LabelMetadataName: ns}}},
		},
	}
	ExpectWithOffset(1, k8s.Create(ctx, policy)).To(Succeed())
	ExpectWithOffset(1, k8s.Create(ctx, binding)).To(Succeed())
	probe := func() error { // not the spec's context: release also runs as a cleanup, after it ended
		return k8s.Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: heldProbe}},
			client.DryRunAll)
	}
	EventuallyWithOffset(1, probe).Should(MatchError(ContainSubstring("held by the test")))
	released := false
	release = func() {
		if released {
			return
		}
		released = true
		Expect(client.IgnoreNotFound(k8s.Delete(context.Background(), binding))).To(Succeed())
		Expect(client.IgnoreNotFound(k8s.Delete(context.Background(), policy))).To(Succeed())
		Eventually(probe).Should(Succeed())
	}
	DeferCleanup(release)
	return release
}

// kubevirtVM reads the KubeVirt VM of the pairs' VM, vm1.
func kubevirtVM(ctx context.Context, ns string) func(Gomega) *kvv1.VirtualMachine {
	return func(g Gomega) *kvv1.VirtualMachine {
		kv := &kvv1.VirtualMachine{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "vm1"}, kv)).To(Succeed())
		return kv
	}
}

// requests lists KubeVirt's pending state change requests of the VM as "Stop{uid}" and "Start".
func requests(kv *kvv1.VirtualMachine) []string {
	out := make([]string, 0, len(kv.Status.StateChangeRequests))
	for _, r := range kv.Status.StateChangeRequests {
		s := string(r.Action)
		if r.UID != nil {
			s += "{" + string(*r.UID) + "}"
		}
		out = append(out, s)
	}
	return out
}

// expectSuperseded checks that op ended Failed, Superseded by the forced Stop by, after its signal was sent or not.
func expectSuperseded(op *v1alpha1.VirtualMachineOperation, by string, sent bool) {
	ExpectWithOffset(1, op.Status.Phase).To(Equal(v1alpha1.OperationFailed), "conditions: %+v", op.Status.Conditions)
	c := completed(op)
	ExpectWithOffset(1, c).NotTo(BeNil())
	ExpectWithOffset(1, c.Status).To(Equal(metav1.ConditionFalse))
	ExpectWithOffset(1, c.Reason).To(Equal(v1alpha1.OperationReasonSuperseded))
	ExpectWithOffset(1, c.Message).To(ContainSubstring(by))
	ExpectWithOffset(1, op.Status.CompletionTime).NotTo(BeNil())
	ExpectWithOffset(1, meta.IsStatusConditionTrue(op.Status.Conditions, v1alpha1.OperationConditionSignalSent)).To(Equal(sent))
}

// opKind is an operation type with its force flag: the five kinds of the operation table.
type opKind struct {
	t     v1alpha1.VirtualMachineOperationType
	force bool
}

func (k opKind) String() string {
	if k.force {
		return "forced " + string(k.t)
	}
	return string(k.t)
}

func (k opKind) supersedes(older opKind) bool { return k.t == stop && k.force && !older.force }

var (
	opStart         = opKind{start, false}
	opStop          = opKind{stop, false}
	opForcedStop    = opKind{stop, true}
	opRestart       = opKind{restart, false}
	opForcedRestart = opKind{restart, true}
)

var _ = Describe("VirtualMachineOperation pairs", func() {
	var ns string
	BeforeEach(func(ctx SpecContext) { ns = newNamespace(ctx) })

	// runningUnderManual creates an AlwaysOnUntilStoppedManually VM and waits until it runs and KubeVirt's
	// runStrategy is Manual (Always only until its first VMI), so that a stop holds.
	runningUnderManual := func(ctx context.Context) *kvv1.VirtualMachineInstance {
		createVM(ctx, ns, "vm1", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)
		vmi := runningVMI(ctx, ns, "vm1")
		EventuallyWithOffset(1, func(g Gomega) kvv1.VirtualMachineRunStrategy {
			kv := kubevirtVM(ctx, ns)(g)
			g.Expect(kv.Spec.RunStrategy).NotTo(BeNil())
			return *kv.Spec.RunStrategy
		}).Should(Equal(kvv1.RunStrategyManual))
		return vmi
	}

	// inFlight waits until KubeVirt holds what the operation of kind k asked for the VMI running before (nil for a
	// Start): its requests pending, and the VMI (if any) stopping.
	inFlight := func(ctx context.Context, k opKind, before *kvv1.VirtualMachineInstance) {
		EventuallyWithOffset(1, func(g Gomega) {
			got := requests(kubevirtVM(ctx, ns)(g))
			vmi := getVMI(ctx, ns, "vm1")
			switch k {
			case opStart, opForcedRestart:
				// A forced restart has virt-api delete the launcher pod itself: the VMI ends and goes, the Start
				// stays (no VMI may be created).
				g.Expect(got).To(ContainElement("Start"))
				g.Expect(vmi).To(BeNil())
			case opStop, opForcedStop:
				g.Expect(got).To(Equal([]string{"Stop{" + string(before.UID) + "}"}))
				g.Expect(vmi).NotTo(BeNil())
				g.Expect(vmi.UID).To(Equal(before.UID))
				g.Expect(vmi.DeletionTimestamp).NotTo(BeNil())
			case opRestart:
				g.Expect(got).To(Equal([]string{"Stop{" + string(before.UID) + "}", "Start"}))
				g.Expect(vmi).NotTo(BeNil())
				g.Expect(vmi.UID).To(Equal(before.UID))
				g.Expect(vmi.DeletionTimestamp).NotTo(BeNil())
			}
		}).Should(Succeed())
	}

	// accepted lists the subresource calls with action that KubeVirt accepted for vm1, from the n-th on.
	accepted := func(n int, action string) int {
		action = strings.ToLower(action) // the subresource: "Restart" → "restart"
		count := 0
		for _, c := range node.CallsFor(ns, "vm1")[n:] {
			if c.Code == http.StatusAccepted && c.Action == action {
				count++
			}
		}
		return count
	}

	// The operation table, pair by pair: the second kind of operation is created while one of the first kind is in
	// flight (KubeVirt accepted its signal and is held from finishing it). Either the second waits for the first
	// and is then judged against the VM the first left (wantAfter: "" completes, else the failure reason), or — a
	// forced Stop over an operation that is not forced — it supersedes the first, removes the Start the first
	// left pending, sends its own forced stop if a VMI is left, and completes only with the VM stopped and no
	// Start pending.
	DescribeTable("an operation created while another is in flight",
		func(ctx SpecContext, first, second opKind, wantAfter string) {
			var before *kvv1.VirtualMachineInstance
			if first == opStart {
				runningUnderManual(ctx)
				Expect(lc.Stop(ctx, ns, "vm1", false)).To(Succeed())
				Eventually(func() *kvv1.VirtualMachineInstance { return getVMI(ctx, ns, "vm1") }).Should(BeNil())
				stoppedVM(ctx, ns, "vm1")
			} else {
				before = runningUnderManual(ctx)
			}
			vmis := node.VMIsCreated(ns, "vm1")

			By(fmt.Sprintf("holding KubeVirt while the %s is in flight", first))
			release := holdKubeVirt(ctx, ns)
			createOp(ctx, ns, "op-1", "vm1", first.t, first.force)
			Eventually(func(g Gomega) v1alpha1.VirtualMachineOperationPhase { return getOp(ctx, ns, "op-1")(g).Status.Phase }).
				Should(Equal(v1alpha1.OperationInProgress))
			inFlight(ctx, first, before)

			By(fmt.Sprintf("creating a %s", second))
			Eventually(func() int { return accepted(0, string(first.t)) }).Should(Equal(1)) // in the audit log
			calls := len(node.CallsFor(ns, "vm1"))
			createOp(ctx, ns, "op-2", "vm1", second.t, second.force)
			superseding := second.supersedes(first)
			if superseding {
				expectSuperseded(finished(ctx, ns, "op-1"), "op-2", true)
				// It acts at once, whatever KubeVirt is held from: sent (InProgress), or done already.
				Eventually(func(g Gomega) v1alpha1.VirtualMachineOperationPhase { return getOp(ctx, ns, "op-2")(g).Status.Phase }).
					Should(BeElementOf(v1alpha1.OperationInProgress, v1alpha1.OperationCompleted, v1alpha1.OperationFailed))
			} else {
				Eventually(func(g Gomega) string {
					c := completed(getOp(ctx, ns, "op-2")(g))
					g.Expect(c).NotTo(BeNil())
					return c.Reason
				}).Should(Equal(v1alpha1.OperationReasonWaitingForOtherOperation))
				Expect(getOp(ctx, ns, "op-1")(Default).Status.Phase).To(Equal(v1alpha1.OperationInProgress))
			}

			By("letting KubeVirt finish")
			release()

			if superseding {
				expectCompleted(finished(ctx, ns, "op-2"))
				stoppedVM(ctx, ns, "vm1")
				Expect(requests(kubevirtVM(ctx, ns)(Default))).NotTo(ContainElement("Start"))
				By("leaving the VM stopped: the first operation's Start was never served")
				Consistently(vmPhase(ctx, ns, "vm1"), "2s").Should(Equal(v1alpha1.VirtualMachineStopped))
				Expect(node.VMIsCreated(ns, "vm1")).To(Equal(vmis))
				if before != nil {
					By("with its own forced stop of the VMI the first operation was stopping")
					Expect(accepted(calls, "stop")).To(Equal(1))
					Expect(endedForced(before.UID)).To(BeTrue())
				} else {
					Expect(accepted(calls, "stop")).To(BeZero()) // no VMI to stop: removing the Start was the stop
				}
				return
			}

			expectCompleted(finished(ctx, ns, "op-1"))
			op := finished(ctx, ns, "op-2")
			// kube-apiserver writes its audit log (node.CallsFor) a moment after it answered.
			if wantAfter != "" {
				expectFailed(op, wantAfter)
				Consistently(func() int { return accepted(calls, string(second.t)) }, "1s").Should(BeZero())
			} else {
				expectCompleted(op)
				By("with its own signal, once")
				Eventually(func() int { return accepted(calls, string(second.t)) }).Should(Equal(1))
				Consistently(func() int { return accepted(calls, string(second.t)) }, "1s").Should(Equal(1))
			}
			switch {
			case second.t == stop && wantAfter == "", first.t == stop && second.t != start:
				stoppedVM(ctx, ns, "vm1")
				Consistently(vmPhase(ctx, ns, "vm1"), "1s").Should(Equal(v1alpha1.VirtualMachineStopped))
			default:
				runningVMI(ctx, ns, "vm1")
			}
		},
		func(first, second opKind, wantAfter string) string {
			out := "waits, then completes"
			switch {
			case second.supersedes(first):
				out = "supersedes it and stops the VM"
			case wantAfter != "":
				out = "waits, then fails " + wantAfter
			}
			return fmt.Sprintf("%s while a %s is in flight: %s", second, first, out)
		},
		pairEntries(),
	)

	It("stops the VM when a Restart, a Stop and a forced Stop are applied together (issue 23)", func(ctx SpecContext) {
		before := runningUnderManual(ctx)
		vmis := node.VMIsCreated(ns, "vm1")
		release := holdKubeVirt(ctx, ns)

		By("the Restart in flight: KubeVirt holds [Stop{VMI}, Start] while the VMI is being deleted")
		createOp(ctx, ns, "op-1-restart", "vm1", restart, false)
		Eventually(func(g Gomega) v1alpha1.VirtualMachineOperationPhase {
			return getOp(ctx, ns, "op-1-restart")(g).Status.Phase
		}).Should(Equal(v1alpha1.OperationInProgress))
		inFlight(ctx, opRestart, before)
		Eventually(func() int { return accepted(0, "restart") }).Should(Equal(1)) // in the audit log
		calls := len(node.CallsFor(ns, "vm1"))
		createOp(ctx, ns, "op-2-stop", "vm1", stop, false)
		createOp(ctx, ns, "op-3-force-stop", "vm1", stop, true)

		By("the forced Stop removing the Restart's Start and sending its own stop, not taking the Restart's for its own")
		Eventually(func(g Gomega) v1alpha1.VirtualMachineOperationPhase {
			return getOp(ctx, ns, "op-3-force-stop")(g).Status.Phase
		}).Should(Equal(v1alpha1.OperationInProgress))
		Eventually(func() int { return accepted(calls, "stop") }).Should(Equal(1))
		Eventually(func(g Gomega) []string { return requests(kubevirtVM(ctx, ns)(g)) }).
			Should(Equal([]string{"Stop{" + string(before.UID) + "}"}))
		Consistently(func(g Gomega) v1alpha1.VirtualMachineOperationPhase {
			return getOp(ctx, ns, "op-3-force-stop")(g).Status.Phase
		}, "1s").Should(Equal(v1alpha1.OperationInProgress), "not Completed while the VMI is still there")
		release()

		expectSuperseded(finished(ctx, ns, "op-1-restart"), "op-3-force-stop", true)
		expectSuperseded(finished(ctx, ns, "op-2-stop"), "op-3-force-stop", false)
		expectCompleted(finished(ctx, ns, "op-3-force-stop"))
		stoppedVM(ctx, ns, "vm1")
		Expect(endedForced(before.UID)).To(BeTrue())
		Consistently(func(g Gomega) {
			g.Expect(vmPhase(ctx, ns, "vm1")(g)).To(Equal(v1alpha1.VirtualMachineStopped))
			if vmi := getVMI(ctx, ns, "vm1"); vmi != nil { // the stopped VMI, on its way out: never a new one
				g.Expect(vmi.UID).To(Equal(before.UID))
			}
		}, "3s").Should(Succeed())
		Expect(node.VMIsCreated(ns, "vm1")).To(Equal(vmis))
		Expect(accepted(calls, "stop")).To(Equal(1))
	})
})

// pairEntries is every pair of the operation table: each kind created while each kind is in flight, with the
// outcome of the second once the first finished ("" completes; a forced Stop over one not forced supersedes it).
func pairEntries() []TableEntry {
	kinds := []opKind{opStart, opStop, opForcedStop, opRestart, opForcedRestart}
	// The VM the first leaves is running (Start, Restart) or stopped (Stop): a Start applies only to a stopped
	// one, a Stop and a Restart only to a running one.
	notApplicable := v1alpha1.OperationReasonNotApplicableForVMPhase
	after := func(first, second opKind) string {
		running := first.t != stop
		switch {
		case second.t == start && running, second.t != start && !running:
			return notApplicable
		default:
			return ""
		}
	}
	out := make([]TableEntry, 0, len(kinds)*len(kinds))
	for _, first := range kinds {
		for _, second := range kinds {
			want := after(first, second)
			if second.supersedes(first) {
				want = ""
			}
			out = append(out, Entry(nil, first, second, want))
		}
	}
	return out
}
