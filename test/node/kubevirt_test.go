//go:build !unit

package node

import (
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/images"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/guest"
)

// guestImage is the tiny guest (test/guest) as a kernel boot container image.
const guestImage = "runpolicy.test/tiny-guest:node"

// TestFullChainOnARealNode runs the whole product on the real node with KubeVirt's real node half: virt-handler as
// the DaemonSet KubeVirt's generator describes (its node-labeller init container reads libvirt's capabilities; it
// goes Ready and marks the node schedulable), the operator as pods from `helm install`, and a runpolicy VM whose
// launcher pod the real virt-controller creates and the real kubelet runs, with runpolicy's hook sidecar image and
// the real virt-launcher, libvirt and QEMU (TCG) booting the tiny guest. The guest reboots itself: the sidecar's
// termination message, published by the kubelet, tells the operator pod, which starts a new VMI with the spec
// changed meanwhile; that guest powers itself off, and the VM stays Stopped.
func TestFullChainOnARealNode(t *testing.T) {
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
	guestDir := guest.Dir(t)
	guestArchive := filepath.Join(dir, "tiny-guest.tar")
	g.Expect(cluster.WriteFilesImage(guestArchive, guestImage, map[string]string{
		"vmlinux": filepath.Join(guestDir, guest.Kernel), "initramfs.cpio.gz": filepath.Join(guestDir, guest.Initrd),
	})).To(Succeed())
	archives = append(archives, guestArchive)

	env, err := cluster.Start(cluster.Options{
		KubeVirt: &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}},
		Node:     &cluster.NodeOptions{KubeVirt: true, Images: archives},
	})
	g.Expect(err).NotTo(HaveOccurred())
	admin, err := client.New(env.Config, client.Options{Scheme: controllers.NewScheme()})
	g.Expect(err).NotTo(HaveOccurred())
	defer func() {
		if t.Failed() {
			dump(t, admin)
			env.MarkFailed()
		}
		g.Expect(env.Stop()).To(Succeed())
	}()

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

	t.Log("helm install: the operator as pods")
	scheme := controllers.NewScheme()
	g.Expect(apiextv1.AddToScheme(scheme)).To(Succeed())
	crdClient, err := client.New(env.Config, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	helmInstall(ctx, t, g, crdClient, env)

	t.Log("a runpolicy VM boots the tiny guest in a launcher pod on the node")
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "chain-"}}
	g.Expect(admin.Create(ctx, ns)).To(Succeed())
	vm := guestVM(ns.Name, "vm", "reboot")
	key := client.ObjectKeyFromObject(vm)
	g.Expect(admin.Create(ctx, vm)).To(Succeed())
	first := &kvv1.VirtualMachineInstance{}
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, first)).To(Succeed())
	}).Should(Succeed())
	g.Expect(first.Spec.Domain.Firmware.KernelBoot.KernelArgs).To(ContainSubstring("action=reboot"))

	t.Log("the next boot will power the guest off: the change waits for a restart")
	g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
	vm.Spec.Template.Spec.Domain.Firmware.KernelBoot.KernelArgs = guestArgs("poweroff")
	g.Expect(admin.Update(ctx, vm)).To(Succeed())

	t.Log("the guest reboots itself: a new VMI with the changed spec")
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
		g.Expect(vm.Status.RestartCount).To(BeEquivalentTo(1))
		g.Expect(vm.Status.ShutdownHistory).To(ContainElement(And(
			HaveField("VMIUID", string(first.UID)),
			HaveField("Source", v1alpha1.ShutdownGuestReset),
			HaveField("Action", v1alpha1.ShutdownRestarted))))
	}).Should(Succeed())

	t.Log("that guest powers itself off: the VM stays Stopped")
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
		g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineStopped))
		g.Expect(vm.Status.LastShutdown).NotTo(BeNil())
		g.Expect(vm.Status.LastShutdown.Source).To(Equal(v1alpha1.ShutdownGuestShutdown))
		g.Expect(vm.Status.LastShutdown.Action).To(Equal(v1alpha1.ShutdownStayedStopped))
		g.Expect(vm.Status.LastShutdown.VMIUID).NotTo(Equal(string(first.UID)))
	}).Should(Succeed())
	g.Consistently(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
		g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineStopped))
		g.Expect(vm.Status.RestartCount).To(BeEquivalentTo(1))
	}, "3s").Should(Succeed())
}

func guestArgs(action string) string { return "console=ttyS0 quiet action=" + action }

// guestVM is a runpolicy VM (AlwaysOnUntilStoppedManually) booting the tiny guest from its kernel boot container
// image, without network; action is what the guest does once booted.
func guestVM(ns, name, action string) *v1alpha1.VirtualMachine {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	vm.Spec.RunPolicy = v1alpha1.RunPolicyAlwaysOnUntilStoppedManually
	vm.Spec.Template = &kvv1.VirtualMachineInstanceTemplateSpec{Spec: kvv1.VirtualMachineInstanceSpec{
		TerminationGracePeriodSeconds: ptr.To[int64](0),
		Domain: kvv1.DomainSpec{
			Resources: kvv1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")}},
			Devices: kvv1.Devices{AutoattachPodInterface: ptr.To(false), AutoattachGraphicsDevice: ptr.To(false),
				AutoattachMemBalloon: ptr.To(false)},
			Firmware: &kvv1.Firmware{KernelBoot: &kvv1.KernelBoot{KernelArgs: guestArgs(action),
				Container: &kvv1.KernelBootContainer{Image: guestImage, KernelPath: "/vmlinux",
					InitrdPath: "/initramfs.cpio.gz", ImagePullPolicy: corev1.PullNever}}},
		},
	}}
	return vm
}
