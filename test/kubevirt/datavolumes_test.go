package kubevirt_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	virtv1 "kubevirt.io/api/core/v1"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"

	"github.com/runpolicy/runpolicy/test/kubevirt"
)

func getDV(ns, name string) (*unstructured.Unstructured, error) {
	dv := &unstructured.Unstructured{}
	dv.SetGroupVersionKind(kubevirt.DataVolumeGVK)
	return dv, k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, dv)
}

var _ = Describe("DataVolumes", func() {
	It("are created from dataVolumeTemplates with the VM as controller owner; an existing one is left alone", func() {
		ns := newNamespace()
		pre := &unstructured.Unstructured{}
		pre.SetGroupVersionKind(kubevirt.DataVolumeGVK)
		pre.SetNamespace(ns)
		pre.SetName("pre")
		Expect(k8s.Create(ctx, pre)).To(Succeed())

		vm := newVM(ns, "vm", virtv1.RunStrategyHalted)
		vm.Spec.DataVolumeTemplates = []virtv1.DataVolumeTemplateSpec{
			{
				ObjectMeta: metav1.ObjectMeta{Name: "vm-root", Labels: map[string]string{"app": "db"}},
				Spec: cdiv1.DataVolumeSpec{
					Source: &cdiv1.DataVolumeSource{Blank: &cdiv1.DataVolumeBlankImage{}},
					Storage: &cdiv1.StorageSpec{Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
					}},
				},
			},
			{ObjectMeta: metav1.ObjectMeta{Name: "pre"}},
		}
		Expect(k8s.Update(ctx, vm)).To(Succeed())

		var dv *unstructured.Unstructured
		Eventually(func() error {
			var err error
			dv, err = getDV(ns, "vm-root")
			return err
		}).Should(Succeed())
		ref := metav1.GetControllerOf(dv)
		Expect(ref).NotTo(BeNil())
		Expect(ref.Kind).To(Equal("VirtualMachine"))
		Expect(ref.UID).To(Equal(vm.UID))
		Expect(*ref.BlockOwnerDeletion).To(BeTrue())
		Expect(dv.GetLabels()).To(HaveKeyWithValue("app", "db"))
		Expect(dv.GetLabels()).To(HaveKeyWithValue(virtv1.CreatedByLabel, string(vm.UID)))
		phase, _, _ := unstructured.NestedString(dv.Object, "status", "phase")
		Expect(phase).To(Equal("Succeeded"))
		size, _, _ := unstructured.NestedString(dv.Object, "spec", "storage", "resources", "requests", "storage")
		Expect(size).To(Equal("1Gi"))

		// Starting the VM brings many more passes: they neither recreate it nor touch the one that was there first.
		vm = getVM(ns, "vm")
		vm.Spec.RunStrategy = ptr(virtv1.RunStrategyAlways)
		Expect(k8s.Update(ctx, vm)).To(Succeed())
		settle(ns, "vm", running, 1)
		again, err := getDV(ns, "vm-root")
		Expect(err).NotTo(HaveOccurred())
		Expect(again.GetUID()).To(Equal(dv.GetUID()))
		got, err := getDV(ns, "pre")
		Expect(err).NotTo(HaveOccurred())
		Expect(got.GetOwnerReferences()).To(BeEmpty())
		Expect(got.GetResourceVersion()).To(Equal(pre.GetResourceVersion()))
	})
})
