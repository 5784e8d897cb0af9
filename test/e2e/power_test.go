//go:build !unit

package e2e

import (
	"context"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/policy"
	"github.com/runpolicy/runpolicy/test/fault"
	"github.com/runpolicy/runpolicy/test/fixture"
)

func getVM(ctx context.Context, g Gomega, key client.ObjectKey) *v1alpha1.VirtualMachine {
	obj := &v1alpha1.VirtualMachine{}
	g.Expect(k8s.Get(ctx, key, obj)).To(Succeed())
	return obj
}

func getVMI(ctx context.Context, key client.ObjectKey) (*kvv1.VirtualMachineInstance, error) {
	vmi := &kvv1.VirtualMachineInstance{}
	return vmi, k8s.Get(ctx, key, vmi)
}

func condStatus(obj *v1alpha1.VirtualMachine, t string) metav1.ConditionStatus {
	if c := meta.FindStatusCondition(obj.Status.Conditions, t); c != nil {
		return c.Status
	}
	return ""
}

// runningVM creates a runpolicy VM named "vm" with policy p in a new namespace, brings it to Running and returns
// its namespace, key and first VMI.
func runningVM(ctx context.Context, p v1alpha1.RunPolicy) (string, client.ObjectKey, *kvv1.VirtualMachineInstance) {
	ns := newNamespace(ctx)
	obj := fixture.VM(ns, "vm", p)
	ExpectWithOffset(1, k8s.Create(ctx, obj)).To(Succeed())
	startAndWait(ctx, obj)
	key := client.ObjectKeyFromObject(obj)
	first, err := getVMI(ctx, key)
	ExpectWithOffset(1, err).NotTo(HaveOccurred())
	return ns, key, first
}

// startAndWait brings the VM to Running: by itself for the policies that start, through KubeVirt's start
// subresource for Manual.
func startAndWait(ctx context.Context, obj *v1alpha1.VirtualMachine) {
	key := client.ObjectKeyFromObject(obj)
	if obj.Spec.RunPolicy == v1alpha1.RunPolicyManual {
		// Pending while the KubeVirt VM is not created yet (an apply retried under load); never Starting or Running.
		Consistently(func(g Gomega) v1alpha1.VirtualMachinePhase { return getVM(ctx, g, key).Status.Phase }, "1s").
			ShouldNot(BeElementOf(v1alpha1.VirtualMachineStarting, v1alpha1.VirtualMachineRunning), "Manual does not start by itself")
		Expect(lc.Client.Start(ctx, obj.Namespace, obj.Name)).To(Succeed())
	}
	Eventually(func(g Gomega) {
		vm := getVM(ctx, g, key)
		g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineRunning))
		g.Expect(condStatus(vm, v1alpha1.ConditionReady)).To(Equal(metav1.ConditionTrue))
		// AlwaysOnUntilStoppedManually starts on Always and settles on Manual once its VMI exists.
		kvvm := &kvv1.VirtualMachine{}
		g.Expect(k8s.Get(ctx, key, kvvm)).To(Succeed())
		g.Expect(kvvm.Spec.RunStrategy).To(HaveValue(Equal(policy.RunStrategy(obj.Spec.RunPolicy, false))))
	}).Should(Succeed())
}

// outcome is the end state a (policy, event) pair must reach.
type outcome struct {
	phase v1alpha1.VirtualMachinePhase
	// vmis is how many VMIs KubeVirt created in all, the first one included.
	vmis int
	// restarts is status.restartCount: restarts made by runpolicy (not by KubeVirt's Always).
	restarts int32
	// source is status.lastShutdown.source; empty when KubeVirt replaces the VMI before runpolicy sees it end.
	source v1alpha1.ShutdownSource
}

var (
	restartedByRunpolicy = func(s v1alpha1.ShutdownSource) outcome {
		return outcome{phase: v1alpha1.VirtualMachineRunning, vmis: 2, restarts: 1, source: s}
	}
	stoppedFor = func(s v1alpha1.ShutdownSource) outcome {
		return outcome{phase: v1alpha1.VirtualMachineStopped, vmis: 1, source: s}
	}
)

// Every policy's end state after each guest event, the shutdown history and a Manual VM started again after its
// guest's poweroff run on the real node (test/node power_test.go, kubevirt_test.go), with real guests.
var _ = Describe("Power policy after guest events", func() {
	It("backs off exponentially when an AlwaysOnUntilStoppedManually VM keeps crashing", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		obj := fixture.VM(ns, "vm", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)
		key := client.ObjectKeyFromObject(obj)
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		startAndWait(ctx, obj)
		for i := 1; i <= 3; i++ {
			Expect(node.GuestCrash(ctx, ns, "vm")).To(Succeed())
			Eventually(func(g Gomega) {
				cur := getVM(ctx, g, key)
				g.Expect(cur.Status.FailureCount).To(BeEquivalentTo(i))
				g.Expect(cur.Status.RestartCount).To(BeEquivalentTo(i))
				g.Expect(cur.Status.Phase).To(Equal(v1alpha1.VirtualMachineRunning))
			}).Should(Succeed())
		}
		Expect(node.VMIsCreated(ns, "vm")).To(Equal(4))
		By("a guest reboot is no failure: the count starts over")
		Expect(node.GuestReboot(ctx, ns, "vm")).To(Succeed())
		Eventually(func(g Gomega) {
			cur := getVM(ctx, g, key)
			g.Expect(cur.Status.FailureCount).To(BeZero())
			g.Expect(cur.Status.RestartCount).To(BeEquivalentTo(4))
		}).Should(Succeed())
	})
})

var _ = Describe("A Stop operation during runpolicy's restart", func() {
	// runpolicy records a restart (phase Starting) before it sends it, and sends it only once virt-controller has
	// seen the VMI end. A Stop created in between finds an ended VMI and no Start: refused as "not running", it would
	// let the restart win. It waits until the restart is sent, then stops the VM.
	It("waits for the restart to go out, then stops the VM: the user's stop wins", func(ctx SpecContext) {
		ns, key, first := runningVM(ctx, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)

		// Hold runpolicy's restart request until the Stop is in: the request is cut short and retried after.
		release := make(chan struct{})
		held := make(chan struct{})
		lc.Arm(fault.Before, func() { close(held); <-release })
		Expect(node.GuestReboot(ctx, ns, "vm")).To(Succeed())
		Eventually(held).Should(BeClosed())
		Expect(getVM(ctx, Default, key).Status.RestartingVMIUID).To(Equal(string(first.UID)))

		stop := &v1alpha1.VirtualMachineOperation{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "stop"},
			Spec: v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: "vm", Type: v1alpha1.OperationStop}}
		Expect(k8s.Create(ctx, stop)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(stop), stop)).To(Succeed())
			g.Expect(stop.Status.Phase).To(Equal(v1alpha1.OperationPending))
			c := meta.FindStatusCondition(stop.Status.Conditions, v1alpha1.OperationConditionCompleted)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Reason).To(Equal(v1alpha1.OperationReasonWaitingForVMPhase))
			g.Expect(c.Message).To(ContainSubstring("a new VMI is about to start"))
		}).Should(Succeed())

		By("the restart goes out, then the Stop stops the VM")
		close(release)
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(stop), stop)).To(Succeed())
			g.Expect(stop.Status.Phase).To(Equal(v1alpha1.OperationCompleted))
			g.Expect(getVM(ctx, g, key).Status.Phase).To(Equal(v1alpha1.VirtualMachineStopped))
		}).Should(Succeed())
		// Two orders are KubeVirt's to choose. The Stop finds runpolicy's Start held beside the ended VMI and removes
		// it: no new VMI, and the restart is withdrawn (not counted). Or virt-controller served the Start first: the
		// Stop stops the new VMI, and the restart counts.
		created := node.VMIsCreated(ns, "vm")
		Expect(created).To(BeNumerically("<=", 2), "the restart went out twice")
		Eventually(func(g Gomega) {
			vm := getVM(ctx, g, key)
			var ended v1alpha1.Shutdown
			g.Expect(vm.Status.ShutdownHistory).To(ContainElement(HaveField("VMIUID", string(first.UID)), &ended))
			if created == 1 {
				g.Expect(ended.Action).To(Equal(v1alpha1.ShutdownStayedStopped))
				g.Expect(vm.Status.RestartCount).To(BeZero())
			} else {
				g.Expect(ended.Action).To(Equal(v1alpha1.ShutdownRestarted))
				g.Expect(vm.Status.RestartCount).To(BeEquivalentTo(1))
			}
		}).Should(Succeed())
		Consistently(func(g Gomega) v1alpha1.VirtualMachinePhase { return getVM(ctx, g, key).Status.Phase }, "2s").
			Should(Equal(v1alpha1.VirtualMachineStopped))
		Expect(node.VMIsCreated(ns, "vm")).To(Equal(created))
	})
})

var _ = Describe("Operator restarts", Ordered, func() {
	// runs the operator again after each test, whatever happened.
	AfterEach(func() {
		if op.stopped() {
			op.start()
		}
	})

	DescribeTable("a crash around the restart request still gives exactly one new VMI",
		func(ctx SpecContext, at fault.Point) {
			ns, key, first := runningVM(ctx, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)

			lc.Arm(at, op.crash)
			Expect(node.GuestReboot(ctx, ns, "vm")).To(Succeed())
			Eventually(op.stopped).Should(BeTrue())

			By("the decision was recorded before KubeVirt was asked")
			Expect(getVM(ctx, Default, key).Status.RestartingVMIUID).To(Equal(string(first.UID)))
			kv := &kvv1.VirtualMachine{}
			switch at {
			case fault.Before:
				// Nothing was asked: nothing happens until an operator runs again.
				Consistently(func() int { return node.VMIsCreated(ns, "vm") }, "1s").Should(Equal(1))
				Expect(k8s.Get(ctx, key, kv)).To(Succeed())
				Expect(kv.Status.StateChangeRequests).To(BeEmpty())
			case fault.Between:
				// KubeVirt holds the Start beside the ended VMI, and never serves it while that VMI is there.
				Consistently(func() int { return node.VMIsCreated(ns, "vm") }, "1s").Should(Equal(1))
				Expect(k8s.Get(ctx, key, kv)).To(Succeed())
				Expect(kv.Status.StateChangeRequests).To(ConsistOf(HaveField("Action", kvv1.StartRequest)))
			default:
				// The ended VMI was deleted after the Start: virt-controller serves it with no operator running.
				Eventually(func() int { return node.VMIsCreated(ns, "vm") }).Should(Equal(2))
			}

			By("a new operator finishes the restart")
			op.start()
			Eventually(func(g Gomega) {
				cur := getVM(ctx, g, key)
				g.Expect(cur.Status.Phase).To(Equal(v1alpha1.VirtualMachineRunning))
				g.Expect(cur.Status.RestartCount).To(BeEquivalentTo(1))
				g.Expect(cur.Status.RestartingVMIUID).To(BeEmpty())
				g.Expect(cur.Status.HandledVMIUID).To(Equal(string(first.UID)))
			}).Should(Succeed())
			Consistently(func() int { return node.VMIsCreated(ns, "vm") }, "2s").Should(Equal(2))
		},
		Entry("crash before the restart request", fault.Before),
		Entry("crash between the restart request and the ended VMI's deletion", fault.Between),
		Entry("crash after the restart request", fault.After),
	)

	It("sends a restart only once virt-controller has seen the VMI end, and a crash before that still gives exactly one new VMI",
		func(ctx SpecContext) {
			ns, key, first := runningVM(ctx, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)

			// virt-controller standing still: its cache of VMIs shows the VMI running for as long as it is paused,
			// and a Start written now would be dropped once it runs again.
			resume, err := env.Pause("virt-controller")
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(resume)
			Expect(node.GuestReboot(ctx, ns, "vm")).To(Succeed())
			Eventually(func(g Gomega) string { return getVM(ctx, g, key).Status.RestartingVMIUID }).Should(Equal(string(first.UID)))

			By("the restart is recorded, and nothing is sent while virt-controller's finalizer is on the VMI")
			Consistently(func(g Gomega) {
				kv := &kvv1.VirtualMachine{}
				g.Expect(k8s.Get(ctx, key, kv)).To(Succeed())
				g.Expect(kv.Status.StateChangeRequests).To(BeEmpty())
				vmi, err := getVMI(ctx, key)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(vmi.UID).To(Equal(first.UID))
				g.Expect(vmi.DeletionTimestamp).To(BeNil())
				g.Expect(vmi.Finalizers).To(ContainElement(kvv1.VirtualMachineControllerFinalizer))
			}, "2s").Should(Succeed())

			By("the operator dies before virt-controller saw the end; a new one sends the restart once it has")
			op.crash()
			Eventually(op.stopped).Should(BeTrue())
			resume()
			Eventually(func(g Gomega) []string {
				vmi, err := getVMI(ctx, key)
				g.Expect(err).NotTo(HaveOccurred())
				return vmi.Finalizers
			}).ShouldNot(ContainElement(kvv1.VirtualMachineControllerFinalizer))
			Consistently(func() int { return node.VMIsCreated(ns, "vm") }, "1s").Should(Equal(1))
			op.start()
			Eventually(func(g Gomega) {
				cur := getVM(ctx, g, key)
				g.Expect(cur.Status.Phase).To(Equal(v1alpha1.VirtualMachineRunning))
				g.Expect(cur.Status.RestartCount).To(BeEquivalentTo(1))
				g.Expect(cur.Status.HandledVMIUID).To(Equal(string(first.UID)))
			}).Should(Succeed())
			Consistently(func() int { return node.VMIsCreated(ns, "vm") }, "2s").Should(Equal(2))
		})

	DescribeTable("a VMI that ended while the operator was down and whose pod is gone does not park the VM",
		func(ctx SpecContext, p v1alpha1.RunPolicy, want outcome) {
			ns := newNamespace(ctx)
			obj := fixture.VM(ns, "vm", p)
			key := client.ObjectKeyFromObject(obj)
			Expect(k8s.Create(ctx, obj)).To(Succeed())
			startAndWait(ctx, obj)

			op.stop()
			Expect(node.GuestReboot(ctx, ns, "vm")).To(Succeed())
			pods, err := node.LauncherPods(ctx, ns, "vm")
			Expect(err).NotTo(HaveOccurred())
			for i := range pods {
				Expect(k8s.Delete(ctx, &pods[i])).To(Succeed())
			}
			Eventually(func() (int, error) { p, err := node.LauncherPods(ctx, ns, "vm"); return len(p), err }).Should(BeZero())
			op.start()

			Eventually(func(g Gomega) {
				cur := getVM(ctx, g, key)
				g.Expect(cur.Status.Phase).To(Equal(want.phase))
				g.Expect(cur.Status.LastShutdown).NotTo(BeNil())
				g.Expect(cur.Status.LastShutdown.Source).To(Equal(want.source), "without its message a reboot is never guessed")
				g.Expect(node.VMIsCreated(ns, "vm")).To(Equal(want.vmis))
			}).Should(Succeed())
			if want.phase == v1alpha1.VirtualMachineStopped {
				Eventually(func() bool { _, err := getVMI(ctx, key); return apierrors.IsNotFound(err) }).Should(BeTrue())
			}
		},
		Entry("Manual stays stopped, cleaned up", v1alpha1.RunPolicyManual, stoppedFor(v1alpha1.ShutdownUnknown)),
		Entry("AlwaysOnUntilStoppedManually comes back", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually,
			restartedByRunpolicy(v1alpha1.ShutdownUnknown)),
	)
})
