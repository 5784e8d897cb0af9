//go:build !unit

package e2e

import (
	"context"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/fixture"
	kvnode "github.com/runpolicy/runpolicy/test/kubevirt"
)

func getDataVolume(ctx context.Context, ns, vmName string) (*metav1.PartialObjectMetadata, error) {
	dv := &metav1.PartialObjectMetadata{}
	dv.SetGroupVersionKind(kvnode.DataVolumeGVK)
	return dv, k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: fixture.DataVolumeName(vmName)}, dv)
}

var _ = Describe("Disks", func() {
	It("keeps the VM's DataVolume through restarts and policy changes; only deleting the VM removes it", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		obj := fixture.WithDataVolume(fixture.VM(ns, "vm", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually))
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		startAndWait(ctx, obj)
		key := client.ObjectKeyFromObject(obj)

		kvvm := &kvv1.VirtualMachine{}
		Expect(k8s.Get(ctx, key, kvvm)).To(Succeed())
		Expect(kvvm.Spec.DataVolumeTemplates).To(HaveLen(1), "the template reaches KubeVirt")
		dv, err := getDataVolume(ctx, ns, "vm")
		Expect(err).NotTo(HaveOccurred())
		Expect(metav1.GetControllerOf(dv).UID).To(Equal(kvvm.UID), "KubeVirt owns the DataVolume")

		// A guest reboot restarts the VMI from outside; the disk stays.
		Expect(node.GuestReboot(ctx, ns, "vm")).To(Succeed())
		Eventually(func(g Gomega) {
			vm := getVM(ctx, g, key)
			g.Expect(vm.Status.RestartCount).To(Equal(int32(1)))
			g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineRunning))
		}).Should(Succeed())
		Expect(node.VMIsCreated(ns, "vm")).To(Equal(2))

		// AlwaysOff stops the VM; the disk stays.
		Eventually(func(g Gomega) {
			vm := getVM(ctx, g, key)
			vm.Spec.RunPolicy = v1alpha1.RunPolicyAlwaysOff
			g.Expect(k8s.Update(ctx, vm)).To(Succeed())
		}).Should(Succeed())
		Eventually(func(g Gomega) v1alpha1.VirtualMachinePhase { return getVM(ctx, g, key).Status.Phase }).
			Should(Equal(v1alpha1.VirtualMachineStopped))
		again, err := getDataVolume(ctx, ns, "vm")
		Expect(err).NotTo(HaveOccurred())
		Expect(again.UID).To(Equal(dv.UID), "the DataVolume was never deleted and recreated")

		// Deleting the runpolicy VM lets the garbage collector remove the KubeVirt VM, then its DataVolume.
		Expect(k8s.Delete(ctx, obj)).To(Succeed())
		Eventually(func() bool { return apierrors.IsNotFound(k8s.Get(ctx, key, &kvv1.VirtualMachine{})) }).Should(BeTrue())
		Eventually(func() bool { _, err := getDataVolume(ctx, ns, "vm"); return apierrors.IsNotFound(err) }).Should(BeTrue())
	})
})
