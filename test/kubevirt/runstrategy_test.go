//go:build !unit

package kubevirt_test

import (
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	virtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/internal/shutdown"
	"github.com/runpolicy/runpolicy/test/kubevirt"
)

// event is what happens to a running VM in the runStrategy table.
type event string

const (
	evCreate     event = "create"
	evReboot     event = "guest reboot"
	evPoweroff   event = "guest poweroff"
	evCrash      event = "guest crash"
	evPodDeleted event = "launcher pod deleted"
)

// runStrategyCase is one row of KubeVirt's behaviour (vm.go syncRunStrategy): after ev, the VM settles in want
// with vmis VMIs created in total.
type runStrategyCase struct {
	strategy virtv1.VirtualMachineRunStrategy
	ev       event
	want     state
	vmis     int
}

// The expected table, as data. A guest reboot (on_reboot=destroy) and a poweroff both end the VMI Succeeded;
// KubeVirt cannot tell them apart. A crash and a vanished pod end it Failed.
var runStrategyTable = []runStrategyCase{
	{virtv1.RunStrategyAlways, evCreate, running, 1},
	{virtv1.RunStrategyAlways, evReboot, running, 2},
	{virtv1.RunStrategyAlways, evPoweroff, running, 2},
	{virtv1.RunStrategyAlways, evCrash, running, 2},
	{virtv1.RunStrategyAlways, evPodDeleted, running, 2},

	{virtv1.RunStrategyRerunOnFailure, evCreate, running, 1},
	{virtv1.RunStrategyRerunOnFailure, evReboot, stopped, 1}, // Succeeded VMI is deleted, not restarted
	{virtv1.RunStrategyRerunOnFailure, evPoweroff, stopped, 1},
	{virtv1.RunStrategyRerunOnFailure, evCrash, running, 2},
	{virtv1.RunStrategyRerunOnFailure, evPodDeleted, running, 2},

	{virtv1.RunStrategyOnce, evCreate, running, 1},
	{virtv1.RunStrategyOnce, evReboot, succeededAndStopped(), 1}, // the finished VMI stays
	{virtv1.RunStrategyOnce, evPoweroff, succeededAndStopped(), 1},
	{virtv1.RunStrategyOnce, evCrash, failedAndStopped(), 1},
	{virtv1.RunStrategyOnce, evPodDeleted, failedAndStopped(), 1},

	{virtv1.RunStrategyManual, evCreate, stopped, 0}, // nothing starts without a start request
	{virtv1.RunStrategyManual, evReboot, succeededAndStopped(), 1},
	{virtv1.RunStrategyManual, evPoweroff, succeededAndStopped(), 1},
	{virtv1.RunStrategyManual, evCrash, failedAndStopped(), 1},
	{virtv1.RunStrategyManual, evPodDeleted, failedAndStopped(), 1},

	{virtv1.RunStrategyHalted, evCreate, stopped, 0},
}

var _ = Describe("runStrategy", func() {
	for _, tc := range runStrategyTable {
		It(string(tc.strategy)+": "+string(tc.ev), func() {
			ns := newNamespace()
			newVM(ns, "vm", tc.strategy)
			if tc.ev == evCreate {
				settle(ns, "vm", tc.want, tc.vmis)
				vm := getVM(ns, "vm")
				Expect(vm.Status.Created).To(Equal(tc.want.VMIPhase != ""))
				Expect(vm.Status.Ready).To(Equal(tc.want.VMIPhase == virtv1.Running))
				if tc.vmis > 0 {
					Expect(vm.Status.RunStrategy).To(Equal(tc.strategy))
				}
				return
			}
			if tc.strategy == virtv1.RunStrategyManual {
				Expect(put(ns, "vm", "start", nil)).To(Succeed())
			}
			settle(ns, "vm", running, 1)
			first := getVMI(ns, "vm")
			pods, err := kv.LauncherPods(ctx, ns, "vm")
			Expect(err).NotTo(HaveOccurred())
			Expect(pods).To(HaveLen(1))
			pod := pods[0]

			switch tc.ev {
			case evReboot:
				Expect(kv.GuestReboot(ctx, ns, "vm")).To(Succeed())
			case evPoweroff:
				Expect(kv.GuestPoweroff(ctx, ns, "vm")).To(Succeed())
			case evCrash:
				Expect(kv.GuestCrash(ctx, ns, "vm")).To(Succeed())
			case evPodDeleted:
				Expect(kv.DeleteLauncherPod(ctx, ns, "vm")).To(Succeed())
			}
			settle(ns, "vm", tc.want, tc.vmis)
			if vmi := getVMI(ns, "vm"); vmi != nil && tc.vmis == 1 {
				Expect(vmi.UID).To(Equal(first.UID))
			}
			if tc.vmis == 2 {
				Expect(getVMI(ns, "vm").UID).NotTo(Equal(first.UID))
			}

			// Where the finished VMI stays, its launcher pod stays too, with the sidecar's message.
			if tc.want.VMIPhase == virtv1.Succeeded || tc.want.VMIPhase == virtv1.Failed && tc.ev == evCrash {
				Expect(k8s.Get(ctx, clientKey(&pod), &pod)).To(Succeed())
				want := map[event]shutdown.Cause{evReboot: shutdown.CauseGuestReset, evPoweroff: shutdown.CauseGuestShutdown,
					evCrash: shutdown.CauseUnknown}[tc.ev]
				Expect(shutdown.Parse(sidecarMessage(&pod)).Cause).To(Equal(want))
				Expect(pod.Status.Phase).To(Equal(map[bool]corev1.PodPhase{true: corev1.PodSucceeded, false: corev1.PodFailed}[tc.ev != evCrash]))
			}
		})
	}
})

var _ = Describe("virt-launcher pod", func() {
	It("looks like KubeVirt's and runs on the node", func() {
		ns := newNamespace()
		newVM(ns, "vm", virtv1.RunStrategyAlways)
		settle(ns, "vm", running, 1)
		vmi := getVMI(ns, "vm")
		Expect(vmi.Labels).To(HaveKeyWithValue("kubevirt.io/vm", "vm"))
		Expect(vmi.Labels).To(HaveKeyWithValue(virtv1.NodeNameLabel, "node01"))
		Expect(vmi.Status.NodeName).To(Equal("node01"))
		ref := metav1.GetControllerOf(vmi)
		Expect(ref).NotTo(BeNil())
		Expect(ref.Kind).To(Equal("VirtualMachine"))
		Expect(ref.UID).To(Equal(getVM(ns, "vm").UID))
		Expect(vmi.Finalizers).To(ContainElements(virtv1.VirtualMachineInstanceFinalizer, virtv1.VirtualMachineControllerFinalizer))
		phases := make([]virtv1.VirtualMachineInstancePhase, 0, len(vmi.Status.PhaseTransitionTimestamps))
		for _, t := range vmi.Status.PhaseTransitionTimestamps {
			phases = append(phases, t.Phase)
		}
		Expect(phases).To(Equal([]virtv1.VirtualMachineInstancePhase{virtv1.Pending, virtv1.Scheduling, virtv1.Scheduled, virtv1.Running}))

		pods, err := kv.LauncherPods(ctx, ns, "vm")
		Expect(err).NotTo(HaveOccurred())
		Expect(pods).To(HaveLen(1))
		pod := pods[0]
		// KubeVirt's generateName virt-launcher-<vmi>- plus 5 characters of utilrand's alphabet
		Expect(pod.Name).To(MatchRegexp(`^virt-launcher-vm-[bcdfghjklmnpqrstvwxz2456789]{5}$`))
		Expect(pod.Spec.ReadinessGates).To(ContainElement(corev1.PodReadinessGate{ConditionType: virtv1.VirtualMachineUnpaused}))
		Expect(pod.Status.Conditions).To(ContainElement(And(
			HaveField("Type", corev1.PodReady), HaveField("Status", corev1.ConditionTrue))), "Ready once virt-controller set the gate")
		Expect(pod.Labels).To(HaveKeyWithValue("kubevirt.io", "virt-launcher"))
		Expect(pod.Labels).To(HaveKeyWithValue("kubevirt.io/created-by", string(vmi.UID)))
		Expect(pod.Labels).To(HaveKeyWithValue("vm.kubevirt.io/name", "vm"))
		Expect(metav1.GetControllerOf(&pod).UID).To(Equal(vmi.UID))
		Expect(pod.Spec.NodeName).To(Equal("node01"))
		Expect(pod.Status.Phase).To(Equal(corev1.PodRunning))
		names := make([]string, 0, len(pod.Spec.Containers))
		for _, c := range pod.Spec.Containers {
			names = append(names, c.Name)
		}
		Expect(names).To(Equal([]string{"compute", "hook-sidecar-0"}))
		Expect(pod.Spec.Containers[1].Image).To(Equal(hookImage))
	})

	It("has no sidecar without the hook annotation", func() {
		ns := newNamespace()
		newVM(ns, "vm", virtv1.RunStrategyHalted)
		// KubeVirt's VM controller writes the VM too (firmware UUID): retry on conflicts
		Eventually(func() error {
			vm := getVM(ns, "vm")
			vm.Spec.Template.ObjectMeta.Annotations = nil
			vm.Spec.RunStrategy = ptr(virtv1.RunStrategyAlways)
			return k8s.Update(ctx, vm)
		}).Should(Succeed())
		settle(ns, "vm", running, 1)
		pods, err := kv.LauncherPods(ctx, ns, "vm")
		Expect(err).NotTo(HaveOccurred())
		Expect(pods).To(HaveLen(1))
		Expect(pods[0].Spec.Containers).To(HaveLen(1))
	})
})

var _ = Describe("stateChangeRequests", func() {
	It("ignores a Stop whose UID is not the current VMI's, and drops it", func() {
		ns := runningManualVM()
		other := "not-the-vmi"
		writeRequests(ns, "vm", virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StopRequest, UID: ptr(typesUID(other))})
		Eventually(func() []virtv1.VirtualMachineStateChangeRequest { return getVM(ns, "vm").Status.StateChangeRequests }).Should(BeEmpty())
		settle(ns, "vm", running, 1)
	})

	It("acts on a Stop with the VMI's UID under Manual and keeps the strategy", func() {
		ns := runningManualVM()
		uid := getVMI(ns, "vm").UID
		writeRequests(ns, "vm", virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StopRequest, UID: &uid})
		settle(ns, "vm", stopped, 1)
		Expect(getVM(ns, "vm").Status.StateChangeRequests).To(BeEmpty())
		Expect(*getVM(ns, "vm").Spec.RunStrategy).To(Equal(virtv1.RunStrategyManual))
	})
})

// Why runpolicy writes its Start request alone only once virt-controller removed its finalizer from the ended VMI
// (internal/lifecycle RequestStart, policy.KubeVirtSawEnd): virt-controller drops a leading Start as soon as its
// cache shows a VMI that is neither final nor being deleted (vm.go isTrimFirstChangeRequestNeeded), and its cache of
// VMIs can lag behind its cache of VMs. It removes its finalizer from a VMI only once that cache shows the VMI final
// or deleted, and informers only move forward.
var _ = Describe("a Start request written beside a VMI", func() {
	It("is dropped while virt-controller sees the VMI running, and deleting the VMI then leaves the VM stopped", func() {
		ns := runningManualVM()
		// The widest lag of virt-controller's VMI cache: the VMI really runs. It carries virt-controller's finalizer,
		// so runpolicy would not write the Start.
		Expect(getVMI(ns, "vm").Finalizers).To(ContainElement(virtv1.VirtualMachineControllerFinalizer))
		writeRequests(ns, "vm", virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StartRequest})
		Eventually(func() []virtv1.VirtualMachineStateChangeRequest { return getVM(ns, "vm").Status.StateChangeRequests }).Should(BeEmpty())
		Expect(k8s.Delete(ctx, getVMI(ns, "vm"))).To(Succeed())
		settle(ns, "vm", stopped, 1)
	})

	It("is kept once virt-controller removed its finalizer from the ended VMI, and served in the pass in which the VMI is gone", func() {
		ns := runningManualVM()
		// Each round writes the Start the moment the finalizer is seen gone, as runpolicy does.
		const rounds = 5
		for round := 1; round <= rounds; round++ {
			ended := getVMI(ns, "vm").UID
			Expect(kv.GuestReboot(ctx, ns, "vm")).To(Succeed())
			Eventually(func(g Gomega) {
				vmi := getVMI(ns, "vm")
				g.Expect(vmi.UID).To(Equal(ended))
				g.Expect(vmi.IsFinal()).To(BeTrue())
				g.Expect(vmi.Finalizers).NotTo(ContainElement(virtv1.VirtualMachineControllerFinalizer))
			}).WithPolling(5 * time.Millisecond).Should(Succeed())
			writeRequests(ns, "vm", virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StartRequest})
			// Beside the ended VMI, virt-controller neither serves nor drops it.
			Consistently(func() []virtv1.VirtualMachineStateChangeRequest { return getVM(ns, "vm").Status.StateChangeRequests }, "1s").
				Should(HaveLen(1))
			Expect(getVMI(ns, "vm").UID).To(Equal(ended))
			Expect(k8s.Delete(ctx, getVMI(ns, "vm"), client.Preconditions{UID: &ended})).To(Succeed())
			settle(ns, "vm", running, round+1)
			Expect(getVMI(ns, "vm").UID).NotTo(Equal(ended))
			Eventually(func() []virtv1.VirtualMachineStateChangeRequest { return getVM(ns, "vm").Status.StateChangeRequests }).Should(BeEmpty())
		}
		Expect(*getVM(ns, "vm").Spec.RunStrategy).To(Equal(virtv1.RunStrategyManual))
	})

	It("behind a Stop for that VMI (virt-api's start) is kept while virt-controller sees the VMI running: it deletes the VMI, then starts a new one", func() {
		ns := runningManualVM()
		uid := getVMI(ns, "vm").UID
		writeRequests(ns, "vm", virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StopRequest, UID: &uid},
			virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StartRequest})
		settle(ns, "vm", running, 2)
		Expect(getVMI(ns, "vm").UID).NotTo(Equal(uid))
		Eventually(func() []virtv1.VirtualMachineStateChangeRequest { return getVM(ns, "vm").Status.StateChangeRequests }).Should(BeEmpty())
		Expect(*getVM(ns, "vm").Spec.RunStrategy).To(Equal(virtv1.RunStrategyManual))
	})
})

// writeRequests sets the VM's stateChangeRequests (retrying conflicts with virt-controller's own status writes).
//
//nolint:unparam // every spec so far names its one VM "vm"; the helper takes the name like the others.
func writeRequests(ns, name string, reqs ...virtv1.VirtualMachineStateChangeRequest) {
	EventuallyWithOffset(1, func() error {
		vm := getVM(ns, name)
		vm.Status.StateChangeRequests = reqs
		return k8s.Status().Update(ctx, vm)
	}).Should(Succeed())
}

var _ = Describe("crash-loop backoff", func() {
	It("delays the restart of a VMI that never ran, then clears once one runs", func() {
		// KubeVirt's delay is 10·n² s plus up to half of it again (vm.go calculateStartBackoffTime): one failure
		// keeps the test short.
		ns := newNamespace()
		kv.FailNextStarts(ns, "vm", 1)
		newVM(ns, "vm", virtv1.RunStrategyAlways)
		Eventually(func() virtv1.VirtualMachinePrintableStatus { return getVM(ns, "vm").Status.PrintableStatus }).
			Should(Equal(virtv1.VirtualMachineStatusCrashLoopBackOff))
		Eventually(func() int {
			if f := getVM(ns, "vm").Status.StartFailure; f != nil {
				return f.ConsecutiveFailCount
			}
			return 0
		}).Should(Equal(1))
		settle(ns, "vm", running, 2)
		Eventually(func() *virtv1.VirtualMachineStartFailure { return getVM(ns, "vm").Status.StartFailure }).Should(BeNil())
	})
})

var _ = Describe("node API", func() {
	It("refuses guest actions on a VM that is not running", func() {
		ns := newNamespace()
		newVM(ns, "vm", virtv1.RunStrategyHalted)
		Expect(kv.GuestReboot(ctx, ns, "vm")).To(MatchError(ContainSubstring("not running")))
		Expect(kv.DeleteLauncherPod(ctx, ns, "vm")).To(MatchError(ContainSubstring("not running")))
	})
})

func sidecarMessage(pod *corev1.Pod) string {
	for _, st := range pod.Status.ContainerStatuses {
		if strings.HasPrefix(st.Name, kubevirt.HookSidecarContainerPrefix) && st.State.Terminated != nil {
			return st.State.Terminated.Message
		}
	}
	return ""
}
