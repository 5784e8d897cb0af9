//go:build !unit

// Package node runs runpolicy as a user installs it: `helm install` of charts/runpolicy onto a real node (Debian's
// containerd and runc, a kubelet, kube-proxy and kube-scheduler built from Go modules: test/cluster node.go), the
// operator running as pods from the image `make images` builds, under the chart's ServiceAccount, with its probes,
// its leader election and its metrics Service, beside KubeVirt's real control plane.
package node

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/images"
	"github.com/runpolicy/runpolicy/test/chartrbac"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/fixture"
)

const (
	release   = chartrbac.Release
	namespace = chartrbac.Namespace
)

// TestHelmInstallOnARealNode installs the chart with helm onto the real node and checks the operator as pods: both
// replicas Ready through their probes, one of them the elected leader, a runpolicy VM applied to KubeVirt by the
// leader pod and a foreign edit of it undone, the metrics Service answering a pod that the metrics-reader
// ClusterRole admits (through kube-proxy), the leader's loss handed over to the other pod, and helm upgrade and
// uninstall keeping the user's VMs.
func TestHelmInstallOnARealNode(t *testing.T) {
	g := NewWithT(t)
	g.SetDefaultEventuallyTimeout(2 * time.Minute)
	g.SetDefaultEventuallyPollingInterval(250 * time.Millisecond)
	ctx := t.Context()

	t.Log("make images")
	built := map[string]images.Result{}
	meta, err := images.MetadataFromRepo(cluster.RepoRoot())
	g.Expect(err).NotTo(HaveOccurred())
	for _, spec := range images.All() {
		res, err := images.Build(ctx, cluster.RepoRoot(), filepath.Join(t.TempDir(), "images"), spec, meta)
		g.Expect(err).NotTo(HaveOccurred())
		built[spec.Name] = res
	}

	t.Log("a cluster with KubeVirt's control plane and a real node; the images imported into its containerd")
	env, admin := startCluster(t, g, cluster.NodeOptions{Images: []string{built[images.Controller.Name].Archive,
		built[images.HookSidecar.Name].Archive}})

	t.Log("helm install, the chart's default values (two replicas, leader election, HTTPS metrics)")
	helmArgs := helmInstall(t, g, env)
	deploy := &appsv1.Deployment{}
	g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: namespace, Name: release}, deploy)).To(Succeed())
	g.Expect(deploy.Spec.Template.Spec.Containers[0].Image).To(Equal(built[images.Controller.Name].Ref),
		"the chart's default image is the one make images builds")
	pods := operatorPods(ctx, g, admin, deploy)
	g.Expect(pods).To(HaveLen(2))
	for _, p := range pods {
		g.Expect(p.Spec.NodeName).To(Equal(cluster.NodeName))
		g.Expect(p.Spec.ServiceAccountName).To(Equal(deploy.Spec.Template.Spec.ServiceAccountName))
		g.Expect(ready(&p)).To(BeTrue(), "%s passed its readiness probe", p.Name)
	}

	t.Log("one pod is the elected leader")
	leader := leaderPod(ctx, g, admin, pods)
	t.Logf("leader: %s", leader)

	t.Log("a runpolicy VM is applied to KubeVirt by the operator pod")
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "node-"}}
	g.Expect(admin.Create(ctx, ns)).To(Succeed())
	vm := fixture.VM(ns.Name, "vm", v1alpha1.RunPolicyAlwaysOff)
	key := client.ObjectKeyFromObject(vm)
	g.Expect(admin.Create(ctx, vm)).To(Succeed())
	kvvm := &kvv1.VirtualMachine{}
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, kvvm)).To(Succeed())
		g.Expect(kvvm.Spec.RunStrategy).To(HaveValue(Equal(kvv1.RunStrategyHalted)))
		g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
		g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineStopped))
		g.Expect(vm.Status.KubeVirtGeneration).To(Equal(kvvm.Generation))
	}).Should(Succeed())

	t.Log("a foreign edit of the KubeVirt VM's spec is undone")
	g.Expect(admin.Get(ctx, key, kvvm)).To(Succeed())
	before := kvvm.Spec.Template.Spec.Domain.Memory.Guest.DeepCopy()
	doubled := before.DeepCopy()
	doubled.Add(before)
	kvvm.Spec.Template.Spec.Domain.Memory.Guest = &doubled
	g.Expect(admin.Update(ctx, kvvm)).To(Succeed())
	edited := kvvm.Generation
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, kvvm)).To(Succeed())
		g.Expect(kvvm.Generation).To(BeNumerically(">", edited))
		g.Expect(kvvm.Spec.Template.Spec.Domain.Memory.Guest.Equal(before)).To(BeTrue())
	}).Should(Succeed())

	t.Log("the metrics Service answers a pod whose ServiceAccount has the metrics-reader ClusterRole, through kube-proxy")
	svc := &corev1.Service{}
	g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: namespace, Name: release + "-metrics"}, svc)).To(Succeed())
	scraper := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "scraper"}}
	g.Expect(admin.Create(ctx, scraper)).To(Succeed())
	g.Expect(admin.Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: ns.Name + "-scraper"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: namespace + "-" + release + "-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns.Name, Name: scraper.Name}},
	})).To(Succeed())
	url := "https://" + net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(svc.Spec.Ports[0].Port))) + "/metrics"
	msg := fetch(ctx, g, admin, env.Node.FetchImage, ns.Name, "scrape", scraper.Name, url, "runpolicy_vm_restarts_total")
	g.Expect(msg).To(HavePrefix("200 OK"))
	g.Expect(msg).To(ContainSubstring(`runpolicy_vm_restarts_total{policy="AlwaysOff",reason="guest-reset"} 0`))

	t.Log("the leader pod's state gauges count the VM")
	leaderAddr := ""
	for _, p := range pods {
		for _, port := range p.Spec.Containers[0].Ports {
			if p.Name == leader && port.Name == svc.Spec.Ports[0].TargetPort.String() {
				leaderAddr = net.JoinHostPort(p.Status.PodIP, strconv.Itoa(int(port.ContainerPort)))
			}
		}
	}
	g.Expect(leaderAddr).NotTo(BeEmpty())
	msg = fetch(ctx, g, admin, env.Node.FetchImage, ns.Name, "scrape-leader", scraper.Name,
		"https://"+leaderAddr+"/metrics", "runpolicy_vms{")
	g.Expect(msg).To(HavePrefix("200 OK"))
	g.Expect(msg).To(ContainSubstring(`runpolicy_vms{phase="Stopped",policy="AlwaysOff"} 1`))

	t.Log("a pod without that role is refused")
	msg = fetch(ctx, g, admin, env.Node.FetchImage, ns.Name, "anonymous", "default", url, "")
	g.Expect(msg).To(HavePrefix("403"))

	t.Log("the leader pod goes: the other replica takes the Lease over and serves the VM")
	g.Expect(admin.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: leader}},
		client.GracePeriodSeconds(0))).To(Succeed())
	var next string
	g.Eventually(func(g Gomega) {
		next = leaderPod(ctx, g, admin, operatorPods(ctx, g, admin, deploy))
		g.Expect(next).NotTo(Equal(leader))
	}).Should(Succeed())
	t.Logf("new leader: %s", next)
	g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
	vm.Spec.RunPolicy = v1alpha1.RunPolicyManual
	g.Expect(admin.Update(ctx, vm)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, kvvm)).To(Succeed())
		g.Expect(kvvm.Spec.RunStrategy).To(HaveValue(Equal(kvv1.RunStrategyManual)))
	}).Should(Succeed())

	t.Log("helm upgrade rolls the pods")
	out, err := chartrbac.RunHelm(append([]string{"upgrade", release, chartDir(), "--reuse-values", "--set", "replicas=1",
		"--wait", "--timeout", "3m"}, helmArgs...)...)
	g.Expect(err).NotTo(HaveOccurred(), "%s", out)
	g.Eventually(func(g Gomega) {
		g.Expect(operatorPods(ctx, g, admin, deploy)).To(HaveLen(1))
	}).Should(Succeed())

	t.Log("helm uninstall: the operator's pods go, the CRDs and the user's VMs stay")
	out, err = chartrbac.RunHelm(append([]string{"uninstall", release, "--wait", "--timeout", "3m"}, helmArgs...)...)
	g.Expect(err).NotTo(HaveOccurred(), "%s", out)
	g.Eventually(func(g Gomega) {
		var list corev1.PodList
		g.Expect(admin.List(ctx, &list, client.InNamespace(namespace))).To(Succeed())
		g.Expect(list.Items).To(BeEmpty())
	}).Should(Succeed())
	g.Expect(admin.Get(ctx, key, &v1alpha1.VirtualMachine{})).To(Succeed())
	g.Expect(admin.Get(ctx, key, &kvv1.VirtualMachine{})).To(Succeed())
}

func chartDir() string { return filepath.Join(cluster.RepoRoot(), "charts", "runpolicy") }

// operatorPods lists the Deployment's pods that are not being deleted.
func operatorPods(ctx context.Context, g Gomega, c client.Client, deploy *appsv1.Deployment) []corev1.Pod {
	var list corev1.PodList
	g.Expect(c.List(ctx, &list, client.InNamespace(deploy.Namespace),
		client.MatchingLabels(deploy.Spec.Selector.MatchLabels))).To(Succeed())
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// leaderPod returns the name of the pod holding the operator's leader Lease (controller-runtime's holder identity
// is the pod's hostname, then "_" and a UUID).
func leaderPod(ctx context.Context, g Gomega, c client.Client, pods []corev1.Pod) string {
	var leases coordinationv1.LeaseList
	g.Expect(c.List(ctx, &leases, client.InNamespace(namespace))).To(Succeed())
	for _, l := range leases.Items {
		holder := ptr.Deref(l.Spec.HolderIdentity, "")
		for _, p := range pods {
			if strings.HasPrefix(holder, p.Name+"_") {
				return p.Name
			}
		}
	}
	g.Expect(leases.Items).To(BeEmpty(), "no Lease is held by a running operator pod")
	return ""
}

// fetch runs a pod that GETs url with its ServiceAccount's token and returns what it wrote to its termination log:
// the status line and the body's lines starting with prefix.
func fetch(ctx context.Context, g Gomega, c client.Client, image, ns, name, sa, url, prefix string) string {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			RestartPolicy:      corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "fetch", Image: image, ImagePullPolicy: corev1.PullNever,
				Args: []string{"fetch", url, prefix}}},
		},
	}
	g.Expect(c.Create(ctx, pod)).To(Succeed())
	var msg string
	g.Eventually(func(g Gomega) {
		g.Expect(c.Get(ctx, client.ObjectKeyFromObject(pod), pod)).To(Succeed())
		g.Expect(pod.Status.ContainerStatuses).To(HaveLen(1))
		term := pod.Status.ContainerStatuses[0].State.Terminated
		g.Expect(term).NotTo(BeNil())
		msg = term.Message
	}).Should(Succeed())
	return msg
}

// startCluster starts a cluster with KubeVirt's control plane (Sidecar gate on) and a real node, and an admin
// client (apiextensions too); the cluster stops when the test ends, its logs kept and its pods and Events logged if
// the test failed.
func startCluster(t *testing.T, g Gomega, node cluster.NodeOptions) (*cluster.Env, client.Client) {
	env, err := cluster.Start(cluster.Options{
		KubeVirt:  &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}},
		Node:      &node,
		ChartCRDs: true,
	})
	g.Expect(err).NotTo(HaveOccurred())
	scheme := controllers.NewScheme()
	g.Expect(apiextv1.AddToScheme(scheme)).To(Succeed())
	admin, err := client.New(env.Config, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() {
		if t.Failed() {
			dump(t, admin)
			env.MarkFailed()
		}
		if err := env.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	return env, admin
}

// dump logs the pods and Events of the cluster, for a failed test.
func dump(t *testing.T, c client.Client) {
	ctx := context.Background()
	var pods corev1.PodList
	if err := c.List(ctx, &pods); err == nil {
		for _, p := range pods.Items {
			t.Logf("pod %s/%s on %q: %s %v", p.Namespace, p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.ContainerStatuses)
		}
	}
	var events corev1.EventList
	if err := c.List(ctx, &events); err == nil {
		for _, e := range events.Items {
			t.Logf("event %s/%s %s: %s %s", e.InvolvedObject.Namespace, e.InvolvedObject.Name, e.Type, e.Reason, e.Message)
		}
	}
}

// helmInstall installs the chart with its default values, its CRDs with it (the test cluster has none of
// runpolicy's: Options.ChartCRDs), and waits for the operator's pods; it returns helm's arguments for the cluster
// and the release's namespace.
func helmInstall(t *testing.T, g Gomega, env *cluster.Env) []string {
	args := []string{"--kubeconfig", env.Kubeconfig, "--namespace", namespace}
	out, err := chartrbac.RunHelm(append([]string{"install", release, chartDir(), "--create-namespace", "--wait",
		"--timeout", "3m"}, args...)...)
	g.Expect(err).NotTo(HaveOccurred(), "%s", out)
	t.Log(out)
	return args
}
