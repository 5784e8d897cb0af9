//go:build !unit

package node

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/test/cluster"
)

// TestKubeVirtNodeHalf runs KubeVirt's real virt-handler on the real node, as the DaemonSet KubeVirt's generator
// describes, from the images test/cluster builds (a Debian root filesystem with libvirt and QEMU, KubeVirt's
// binaries): its node-labeller init container reads libvirt's capabilities, virt-handler goes Ready through its
// probes and marks the node schedulable for VMIs.
func TestKubeVirtNodeHalf(t *testing.T) {
	g := NewWithT(t)
	g.SetDefaultEventuallyTimeout(3 * time.Minute)
	g.SetDefaultEventuallyPollingInterval(time.Second)
	ctx := t.Context()

	env, err := cluster.Start(cluster.Options{
		KubeVirt: &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}},
		Node:     &cluster.NodeOptions{KubeVirt: true},
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
}
