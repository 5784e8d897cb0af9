//go:build !unit

package node

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/guest"
)

// dottedName checks that runpolicy finds a VM's launcher pod, and the reason its guest ended, when KubeVirt's
// labels do not name the VM: KubeVirt's vm.kubevirt.io/name label on launcher pods is the VMI's hostname, here
// spec.hostname "other", and the VM's name has a dot. The guest's own reboot restarts the Manual VM.
func dottedName(t *testing.T, env *cluster.Env, admin client.Client) {
	g, ns := subtest(t, admin, "names", 3*time.Minute)
	ctx := t.Context()

	obj := guest.VM(ns.Name, "web.prod", v1alpha1.RunPolicyManual, guestImage, "reboot")
	obj.Spec.Template.Spec.Hostname = "other"
	key := client.ObjectKeyFromObject(obj)
	g.Expect(admin.Create(ctx, obj)).To(Succeed())
	g.Eventually(func() error { return runVirtctl(ctx, env, "start", obj.Name, "-n", ns.Name) }, time.Minute).Should(Succeed())
	first := &kvv1.VirtualMachineInstance{}
	g.Eventually(func() error { return admin.Get(ctx, key, first) }).Should(Succeed())
	setAction(ctx, g, admin, key, "hang") // the boot after runpolicy's restart keeps running

	t.Log("its launcher pod is labelled with the hostname, not the VM's name")
	g.Eventually(func(g Gomega) {
		var pods corev1.PodList
		g.Expect(admin.List(ctx, &pods, client.InNamespace(ns.Name),
			client.MatchingLabels{kvv1.CreatedByLabel: string(first.UID)})).To(Succeed())
		g.Expect(pods.Items).To(HaveLen(1))
		g.Expect(pods.Items[0].Labels).To(HaveKeyWithValue("vm.kubevirt.io/name", "other"))
	}).Should(Succeed())

	t.Log("the guest reboots itself: runpolicy reads the reason from that pod and restarts the VM")
	restartedAfterReboot(ctx, g, admin, key, first.UID, 0)
	g.Expect(admin.Delete(ctx, ns)).To(Succeed()) // its guest would slow the subtests that follow
}
