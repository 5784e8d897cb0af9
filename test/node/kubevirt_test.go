//go:build !unit

package node

import (
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/images"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/guest"
)

// guestImage is the tiny guest (test/guest) as a kernel boot container image.
const guestImage = "runpolicy.test/tiny-guest:node"

// TestKubeVirtOnARealNode runs the whole product on the real node with KubeVirt's real node half: virt-handler as
// the DaemonSet KubeVirt's generator describes (its node-labeller init container reads libvirt's capabilities; it
// goes Ready and marks the node schedulable), the operator as pods from `helm install`, and runpolicy VMs whose
// launcher pods the real virt-controller creates and the real kubelet runs, with runpolicy's hook sidecar image and
// the real virt-launcher, libvirt and QEMU (TCG) booting the tiny guest. Its subtests share that cluster.
func TestKubeVirtOnARealNode(t *testing.T) {
	g := NewWithT(t)
	g.SetDefaultEventuallyTimeout(3 * time.Minute)
	g.SetDefaultEventuallyPollingInterval(time.Second)
	ctx := t.Context()

	t.Log("make images, and the tiny guest as a kernel boot container image")
	meta, err := images.MetadataFromRepo(cluster.RepoRoot())
	g.Expect(err).NotTo(HaveOccurred())
	dir := t.TempDir()
	archives := make([]string, 0, len(images.All())+1)
	for _, spec := range images.All() {
		res, err := images.Build(ctx, cluster.RepoRoot(), dir, spec, meta)
		g.Expect(err).NotTo(HaveOccurred())
		archives = append(archives, res.Archive)
	}
	guestArchive, err := guest.WriteImage(guest.Dir(t), dir, guestImage)
	g.Expect(err).NotTo(HaveOccurred())
	archives = append(archives, guestArchive)

	env, admin := startCluster(t, g, cluster.NodeOptions{KubeVirt: true, Images: archives})

	t.Log("virt-handler's DaemonSet runs a Ready pod on the node")
	ds := &appsv1.DaemonSet{}
	g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: env.KubeVirt.Namespace, Name: "virt-handler"}, ds)).To(Succeed())
	g.Eventually(func(g Gomega) {
		var pods corev1.PodList
		g.Expect(admin.List(ctx, &pods, client.InNamespace(ds.Namespace), client.MatchingLabels(ds.Spec.Selector.MatchLabels))).To(Succeed())
		g.Expect(pods.Items).To(HaveLen(1))
		g.Expect(pods.Items[0].Spec.NodeName).To(Equal(cluster.NodeName))
		g.Expect(ready(&pods.Items[0])).To(BeTrue())
	}).Should(Succeed())

	t.Log("virt-handler marks the node schedulable for VMIs")
	g.Eventually(func(g Gomega) {
		node := &corev1.Node{}
		g.Expect(admin.Get(ctx, client.ObjectKey{Name: cluster.NodeName}, node)).To(Succeed())
		g.Expect(node.Labels).To(HaveKeyWithValue("kubevirt.io/schedulable", "true"))
	}).Should(Succeed())

	t.Log("helm install: the operator as pods; the kubectl plugin")
	helmArgs := helmInstall(t, g, env)
	build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, "kubectl-runpolicy"), "./cmd/kubectl-runpolicy")
	build.Dir = cluster.RepoRoot()
	out, err := build.CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), "%s", out)

	t.Run("full chain", func(t *testing.T) { fullChain(t, env, admin, dir) })
	t.Run("foreign edits", func(t *testing.T) { foreignEdits(t, admin) })
	t.Run("not ours", func(t *testing.T) { notOurs(t, env, admin) })
	t.Run("dotted name", func(t *testing.T) { dottedName(t, env, admin) })
	t.Run("power policies", func(t *testing.T) { powerPolicies(t, env, admin) })
	t.Run("restart windows", func(t *testing.T) { restartWindows(t, env, admin) })
	t.Run("migrate", func(t *testing.T) { migrate(t, env, admin, dir) })
	t.Run("start queue", func(t *testing.T) { startQueue(t, env, admin, helmArgs) })
	t.Run("sidecar gate", func(t *testing.T) { sidecarGate(t, env, admin) }) // last: it changes the KubeVirt CR
}

// fullChain follows one AlwaysOnUntilStoppedManually VM:
//
//   - the guest reboots itself: the sidecar's termination message, published by the kubelet, tells the operator
//     pod, which starts a new VMI with the spec changed meanwhile;
//   - `kubectl runpolicy restart --wait` (the plugin) restarts it through a VirtualMachineOperation;
//   - `virtctl reset` (virt-api → virt-handler → libvirt) resets it from outside: runpolicy restarts it with the
//     spec changed meanwhile;
//   - that guest powers itself off, and the VM stays Stopped.
func fullChain(t *testing.T, env *cluster.Env, admin client.Client, dir string) {
	g, ns := subtest(t, admin, "chain", 3*time.Minute)
	ctx := t.Context()

	t.Log("a runpolicy VM boots the tiny guest in a launcher pod on the node")
	vm := guest.VM(ns.Name, "vm", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, guestImage, "reboot")
	key := client.ObjectKeyFromObject(vm)
	g.Expect(admin.Create(ctx, vm)).To(Succeed())
	first := &kvv1.VirtualMachineInstance{}
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, first)).To(Succeed())
	}).Should(Succeed())
	g.Expect(first.Spec.Domain.Firmware.KernelBoot.KernelArgs).To(ContainSubstring("action=reboot"))

	t.Log("its next boots keep running: the change waits for a restart")
	setAction(ctx, g, admin, key, "hang")

	t.Log("the guest reboots itself: a new VMI with the changed spec")
	second := restartedAfterReboot(ctx, g, admin, key, first.UID, 0)

	t.Log("kubectl runpolicy restart --wait: a Restart operation, a new VMI")
	plugin := filepath.Join(dir, "kubectl-runpolicy")
	out, err := exec.CommandContext(ctx, plugin, "restart", "vm", "-n", ns.Name, "--kubeconfig", env.Kubeconfig,
		"--wait", "--timeout", "3m").CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), "%s", out)
	t.Logf("kubectl runpolicy restart: %s", out)
	third := runningVMI(ctx, g, admin, key, second.UID)

	t.Log("virtctl reset (virt-api → virt-handler → libvirt) with a spec change pending: restarted from outside")
	setAction(ctx, g, admin, key, "poweroff")
	virtctl(ctx, g, env, "reset", "vm", "-n", ns.Name)
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
		g.Expect(vm.Status.ShutdownHistory).To(ContainElement(And(
			HaveField("VMIUID", string(third.UID)),
			HaveField("Source", v1alpha1.ShutdownHostReset),
			HaveField("Action", v1alpha1.ShutdownRestarted))))
	}).Should(Succeed())

	t.Log("that guest powers itself off: the VM stays Stopped")
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
		g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineStopped))
		g.Expect(vm.Status.LastShutdown).NotTo(BeNil())
		g.Expect(vm.Status.LastShutdown.Source).To(Equal(v1alpha1.ShutdownGuestShutdown))
		g.Expect(vm.Status.LastShutdown.Action).To(Equal(v1alpha1.ShutdownStayedStopped))
		g.Expect(vm.Status.LastShutdown.VMIUID).NotTo(BeElementOf(string(first.UID), string(second.UID), string(third.UID)))
	}).Should(Succeed())
	restarts := vm.Status.RestartCount
	g.Consistently(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
		g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineStopped))
		g.Expect(vm.Status.RestartCount).To(Equal(restarts))
	}, "3s").Should(Succeed())

	t.Log("the shutdown history, newest first: the poweroff, the reset, the guest's reboot")
	hist := vm.Status.ShutdownHistory
	g.Expect(hist).NotTo(BeEmpty())
	g.Expect(vm.Status.LastShutdown).To(HaveValue(Equal(hist[0])))
	at := func(uid types.UID) int {
		return slices.IndexFunc(hist, func(r v1alpha1.Shutdown) bool { return r.VMIUID == string(uid) })
	}
	g.Expect(at(third.UID)).To(BeNumerically(">", 0), "the reset's record, after the poweroff's: %+v", hist)
	g.Expect(at(first.UID)).To(BeNumerically(">", at(third.UID)), "the guest reboot's record, after the reset's: %+v", hist)
	g.Expect(hist[at(first.UID)].Source).To(Equal(v1alpha1.ShutdownGuestReset))
}

// subtest is what a subtest starts from: a Gomega whose Eventually waits up to timeout, polling every second, and
// a namespace of its own named from prefix.
func subtest(t *testing.T, admin client.Client, prefix string, timeout time.Duration) (*WithT, *corev1.Namespace) {
	g := NewWithT(t)
	g.SetDefaultEventuallyTimeout(timeout)
	g.SetDefaultEventuallyPollingInterval(time.Second)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	g.Expect(admin.Create(t.Context(), ns)).To(Succeed())
	return g, ns
}

// setAction changes what the guest does at its next boot (the VM's kernel arguments).
func setAction(ctx context.Context, g Gomega, c client.Client, key client.ObjectKey, action string) {
	vm := &v1alpha1.VirtualMachine{}
	g.Expect(c.Get(ctx, key, vm)).To(Succeed())
	patch := client.MergeFrom(vm.DeepCopy())
	vm.Spec.Template.Spec.Domain.Firmware.KernelBoot.KernelArgs = guest.Args(action)
	g.Expect(c.Patch(ctx, vm, patch)).To(Succeed())
}

// restartedAfterReboot waits until runpolicy has restarted the VM after the guest's reboot ended the VMI with UID
// ended, and the VM runs a VMI whose guest keeps running (action hang), which it returns; before is the VM's
// restartCount before that VMI ended. The tests switch the template to hang once the rebooting VMI exists, and a
// slow switch lets the next boot reboot too: each reboot until then is one more restart of its own. So every
// shutdown record from the ended VMI on must be a guest reset that runpolicy restarted, and restartCount must
// have grown by exactly their number (a second restart of one ended VMI would count once more).
func restartedAfterReboot(ctx context.Context, g Gomega, c client.Client, key client.ObjectKey, ended types.UID,
	before int32) *kvv1.VirtualMachineInstance {
	vm := &v1alpha1.VirtualMachine{}
	vmi := &kvv1.VirtualMachineInstance{}
	g.Eventually(func(g Gomega) {
		g.Expect(c.Get(ctx, key, vm)).To(Succeed())
		g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineRunning))
		g.Expect(c.Get(ctx, key, vmi)).To(Succeed())
		g.Expect(vmi.Status.Phase).To(Equal(kvv1.Running))
		g.Expect(vmi.Spec.Domain.Firmware.KernelBoot.KernelArgs).To(Equal(guest.Args("hang")))
		hist := vm.Status.ShutdownHistory
		at := slices.IndexFunc(hist, func(r v1alpha1.Shutdown) bool { return r.VMIUID == string(ended) })
		g.Expect(at).To(BeNumerically(">=", 0), "the ended VMI's record: %+v", hist)
		g.Expect(vm.Status.LastShutdown).To(HaveValue(Equal(hist[0])))
		for _, r := range hist[:at+1] {
			g.Expect(r.Source).To(Equal(v1alpha1.ShutdownGuestReset), "%+v", hist)
			g.Expect(r.Action).To(Equal(v1alpha1.ShutdownRestarted), "%+v", hist)
			g.Expect(r.VMIUID).NotTo(Equal(string(vmi.UID)), "%+v", hist)
		}
		g.Expect(vm.Status.RestartCount).To(Equal(before+int32(at+1)), "one restart per ended VMI: %+v", hist)
	}).Should(Succeed())
	return vmi
}

// runningVMI waits for the VM's VMI to be another than the one with UID before, and Running.
func runningVMI(ctx context.Context, g Gomega, c client.Client, key client.ObjectKey, before types.UID) *kvv1.VirtualMachineInstance {
	vmi := &kvv1.VirtualMachineInstance{}
	g.Eventually(func(g Gomega) {
		g.Expect(c.Get(ctx, key, vmi)).To(Succeed())
		g.Expect(vmi.UID).NotTo(Equal(before))
		g.Expect(vmi.Status.Phase).To(Equal(kvv1.Running))
	}).Should(Succeed())
	return vmi
}
