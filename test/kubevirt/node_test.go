//go:build !unit

package kubevirt_test

import (
	"net/http"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	virtv1 "kubevirt.io/api/core/v1"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"

	"github.com/runpolicy/runpolicy/internal/shutdown"
	"github.com/runpolicy/runpolicy/test/kubevirt"
)

var _ = Describe("node", func() {
	It("carries virt-handler's heartbeat, so virt-controller schedules to it", func() {
		node := &corev1.Node{}
		Expect(k8s.Get(ctx, types.NamespacedName{Name: "node01"}, node)).To(Succeed())
		Expect(node.Labels).To(HaveKeyWithValue(virtv1.NodeSchedulable, "true"))
		Expect(node.Annotations).To(HaveKey(virtv1.VirtHandlerHeartbeat))
	})
})

var _ = Describe("subresource calls", func() {
	It("are counted from kube-apiserver's audit log with virt-api's answer and the caller", func() {
		ns := newNamespace()
		newVM(ns, "vm", virtv1.RunStrategyManual)
		cfg := rest.CopyConfig(env.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: "alice@example.com", Groups: []string{"system:masters", "ops"}}
		alice, err := kubevirt.NewSubresourceClient(cfg)
		Expect(err).NotTo(HaveOccurred())
		Expect(kubevirt.PutVMSubresource(ctx, alice, ns, "vm", "start", &virtv1.StartOptions{})).To(Succeed())
		settle(ns, "vm", running, 1)
		err = put(ns, "vm", "start", nil)
		Expect(apierrors.IsConflict(err)).To(BeTrue(), "%v", err)

		Eventually(func() []kubevirt.Call { return kv.CallsFor(ns, "vm") }).Should(HaveLen(2))
		calls := kv.CallsFor(ns, "vm")
		Expect(calls[0].Action).To(Equal("start"))
		Expect(calls[0].Code).To(Equal(http.StatusAccepted))
		Expect(calls[0].User).To(Equal("alice@example.com"))
		Expect(calls[0].Groups).To(ContainElements("system:masters", "ops"))
		Expect(calls[1].Code).To(Equal(http.StatusConflict), "virt-api: VM is already running")
	})

	It("are authorized by kube-apiserver's RBAC before they reach virt-api", func() {
		ns := newNamespace()
		newVM(ns, "vm", virtv1.RunStrategyManual)
		cfg := rest.CopyConfig(env.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: "mallory"}
		mallory, err := kubevirt.NewSubresourceClient(cfg)
		Expect(err).NotTo(HaveOccurred())
		err = kubevirt.PutVMSubresource(ctx, mallory, ns, "vm", "start", nil)
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Eventually(func() []kubevirt.Call { return kv.CallsFor(ns, "vm") }).Should(ConsistOf(HaveField("Code", http.StatusForbidden)))
		settle(ns, "vm", stopped, 0)
	})
})

var _ = Describe("guest end", func() {
	It("leaves the final VMI and its pod under Manual, with the sidecar's message, until the next start", func() {
		ns := runningManualVM()
		Expect(kv.GuestReboot(ctx, ns, "vm")).To(Succeed())
		settle(ns, "vm", succeededAndStopped(), 1)
		pods, err := kv.LauncherPods(ctx, ns, "vm")
		Expect(err).NotTo(HaveOccurred())
		Expect(pods).To(HaveLen(1))
		Expect(shutdown.Parse(sidecarMessage(&pods[0])).Cause).To(Equal(shutdown.CauseGuestReset))

		Expect(put(ns, "vm", "start", nil)).To(Succeed())
		settle(ns, "vm", running, 2)
		Eventually(func() error { return k8s.Get(ctx, clientKey(&pods[0]), &corev1.Pod{}) }).Should(Satisfy(apierrors.IsNotFound))
	})

	It("of a stop through KubeVirt is an ACPI shutdown: guest-shutdown, then libvirt's host-signal", func() {
		ns := runningManualVM()
		pods, err := kv.LauncherPods(ctx, ns, "vm")
		Expect(err).NotTo(HaveOccurred())
		var seen *corev1.Pod
		Expect(put(ns, "vm", "stop", nil)).To(Succeed())
		// catch the terminated pod before the kubelet removes it
		Eventually(func() bool {
			p := &corev1.Pod{}
			if err := k8s.Get(ctx, clientKey(&pods[0]), p); err == nil && sidecarMessage(p) != "" {
				seen = p
			}
			return seen != nil || apierrors.IsNotFound(k8s.Get(ctx, clientKey(&pods[0]), &corev1.Pod{}))
		}).Should(BeTrue())
		settle(ns, "vm", stopped, 1)
		if seen != nil {
			Expect(shutdown.Parse(sidecarMessage(seen)).Cause).To(Equal(shutdown.CauseGuestShutdown))
		}
	})
})

var _ = Describe("DataVolumes", func() {
	It("are created by virt-controller from dataVolumeTemplates and provisioned by the CDI stand-in", func() {
		ns := newNamespace()
		vm := newVM(ns, "vm", virtv1.RunStrategyHalted)
		Eventually(func() error {
			vm = getVM(ns, "vm")
			vm.Spec.DataVolumeTemplates = []virtv1.DataVolumeTemplateSpec{{
				ObjectMeta: metav1.ObjectMeta{Name: "vm-root"},
				Spec: cdiv1.DataVolumeSpec{
					Source: &cdiv1.DataVolumeSource{Blank: &cdiv1.DataVolumeBlankImage{}},
					Storage: &cdiv1.StorageSpec{Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
					}},
				},
			}}
			vm.Spec.Template.Spec.Domain.Devices.Disks = []virtv1.Disk{{Name: "root"}}
			vm.Spec.Template.Spec.Volumes = []virtv1.Volume{{Name: "root",
				VolumeSource: virtv1.VolumeSource{DataVolume: &virtv1.DataVolumeSource{Name: "vm-root"}}}}
			vm.Spec.RunStrategy = ptr(virtv1.RunStrategyAlways)
			return k8s.Update(ctx, vm)
		}).Should(Succeed())
		settle(ns, "vm", running, 1)
		Eventually(func() []virtv1.VirtualMachineInstanceCondition { return getVMI(ns, "vm").Status.Conditions }).Should(ContainElement(And(
			HaveField("Type", virtv1.VirtualMachineInstanceReady), HaveField("Status", corev1.ConditionTrue))), "virt-controller reports the VMI Ready")
		dv := &unstructured.Unstructured{}
		dv.SetGroupVersionKind(kubevirt.DataVolumeGVK)
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "vm-root"}, dv)).To(Succeed())
		Expect(metav1.GetControllerOf(dv).UID).To(Equal(vm.UID), "KubeVirt owns the DataVolume")
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "vm-root"}, &corev1.PersistentVolumeClaim{})).To(Succeed())
	})
})

var _ = Describe("Sidecar feature gate", Serial, func() {
	It("is enforced by real virt-api and can be turned off and on while the cluster runs", func() {
		DeferCleanup(func() { Expect(env.KubeVirt.SetFeatureGates(ctx, []string{"Sidecar"})).To(Succeed()) })
		Expect(env.KubeVirt.SetFeatureGates(ctx, nil)).To(Succeed())
		ns := newNamespace()
		rs := virtv1.RunStrategyHalted
		vm := &virtv1.VirtualMachine{
			ObjectMeta: metav1.ObjectMeta{Name: "vm", Namespace: ns},
			Spec: virtv1.VirtualMachineSpec{RunStrategy: &rs, Template: &virtv1.VirtualMachineInstanceTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{kubevirt.HookSidecarsAnnotation: sidecarAnnotation}},
				Spec:       virtv1.VirtualMachineInstanceSpec{Domain: virtv1.DomainSpec{Memory: &virtv1.Memory{Guest: ptr(resource.MustParse("128Mi"))}}},
			}},
		}
		err := k8s.Create(ctx, vm)
		Expect(err).To(MatchError(ContainSubstring("sidecar feature gate is not enabled")))
	})
})
