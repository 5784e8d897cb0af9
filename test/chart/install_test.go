//go:build !unit

package chart

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/internal/metrics"
	"github.com/runpolicy/runpolicy/internal/policy"
	"github.com/runpolicy/runpolicy/test/chartrbac"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/fixture"
	kvnode "github.com/runpolicy/runpolicy/test/kubevirt"
)

// installValues are the --set values of the test install. The ServiceMonitor stays off: the test cluster has no
// Prometheus Operator CRDs (the golden test renders it).
var installValues = []string{"restartBackoff.base=1s"}

// TestInstallAndRunAsServiceAccount installs the chart into the test kube-apiserver (every object must be accepted,
// the CRDs too), then runs the operator in-process as the chart's ServiceAccount (a token of it, so only the chart's
// ClusterRole and Role apply) with the installed Deployment's args (test/chartrbac) through a guest reboot and Stop,
// Start and Restart operations, checks its metrics and what it must not be able to do, and finally upgrades and
// uninstalls the release.
func TestInstallAndRunAsServiceAccount(t *testing.T) {
	g := NewWithT(t)
	g.SetDefaultEventuallyTimeout(90 * time.Second)
	g.SetDefaultEventuallyPollingInterval(250 * time.Millisecond)
	logs := &logBuffer{}
	ctrl.SetLogger(zap.New(zap.WriteTo(logs), zap.UseDevMode(true)))
	defer logs.dumpOnFailure(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// runpolicy's CRDs are left out of the test cluster: the chart's own are what gets installed.
	env, err := cluster.Start(cluster.Options{KubeVirt: &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}}, ChartCRDs: true})
	g.Expect(err).NotTo(HaveOccurred())
	defer func() {
		if t.Failed() {
			env.MarkFailed()
		}
		g.Expect(env.Stop()).To(Succeed())
	}()
	scheme := controllers.NewScheme()
	g.Expect(apiextv1.AddToScheme(scheme)).To(Succeed())
	admin, err := client.New(env.Config, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	node, err := kvnode.Start(ctx, env.Config, kvnode.Options{AuditLog: env.AuditLog})
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { g.Expect(node.Stop()).To(Succeed()) }()

	t.Log("helm install")
	kubeconfig := []string{"--kubeconfig", env.Kubeconfig, "--namespace", namespace}
	install := append([]string{"install", release, chartDir(), "--create-namespace"}, kubeconfig...)
	for _, s := range installValues {
		install = append(install, "--set", s)
	}
	t.Log(mustHelm(t, install...))

	var crds apiextv1.CustomResourceDefinitionList
	g.Eventually(func(g Gomega) {
		g.Expect(admin.List(ctx, &crds, client.MatchingLabels{"app.kubernetes.io/instance": release})).To(Succeed())
		g.Expect(crds.Items).To(HaveLen(3))
		for _, crd := range crds.Items {
			g.Expect(established(&crd)).To(BeTrue(), crd.Name)
			g.Expect(crd.Annotations).To(HaveKeyWithValue("helm.sh/resource-policy", "keep"))
		}
	}).Should(Succeed())
	deploy := &appsv1.Deployment{}
	g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: namespace, Name: release}, deploy)).To(Succeed())
	g.Expect(deploy.Spec.Replicas).To(Equal(ptr.To[int32](2)))
	sa := deploy.Spec.Template.Spec.ServiceAccountName
	g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: namespace, Name: sa}, &corev1.ServiceAccount{})).To(Succeed())
	g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: namespace, Name: release + "-metrics"}, &corev1.Service{})).To(Succeed())
	g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: namespace, Name: release}, &policyv1.PodDisruptionBudget{})).To(Succeed())
	g.Expect(admin.Get(ctx, client.ObjectKey{Name: namespace + "-" + release + "-controller"}, &rbacv1.ClusterRole{})).To(Succeed())

	t.Log("running the operator as the chart's ServiceAccount (a token from the TokenRequest API), with the Deployment's args")
	op, err := chartrbac.ForDeployment(ctx, env, deploy)
	g.Expect(err).NotTo(HaveOccurred())
	flags, err := op.Flags()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(flags.Controllers.HookSidecarImage).NotTo(BeEmpty(), "--hook-sidecar-image")
	g.Expect(flags.SidecarMode).To(Equal(string(policy.SidecarAuto)), "--hook-sidecar")
	g.Expect(flags.LeaderElect).To(BeTrue(), "--leader-elect")
	g.Expect(flags.LeaderNS).To(Equal(namespace), "--leader-election-namespace")
	user := op.User
	g.Expect(user).To(Equal("system:serviceaccount:" + namespace + ":" + sa))
	mgr, opts, err := op.Manager()
	g.Expect(err).NotTo(HaveOccurred())
	opts.PodGuardInterval = time.Second // the chart's launcher-pod policy leaves below: say so at once
	g.Expect(controllers.Setup(mgr, opts)).To(Succeed())
	mgrCtx, cancelMgr := context.WithCancel(ctx)
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Start(mgrCtx) }()
	var stopMgrOnce sync.Once
	var mgrErr error
	stopMgr := func() error {
		stopMgrOnce.Do(func() { cancelMgr(); mgrErr = <-mgrDone })
		return mgrErr
	}
	defer func() { g.Expect(stopMgr()).To(Succeed()) }()
	select {
	case <-mgr.Elected():
	case err := <-mgrDone:
		stopMgrOnce.Do(func() { mgrErr = err })
		t.Fatalf("the manager stopped before it was elected (Role for Leases?): %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("the operator was never elected leader: can its ServiceAccount manage Leases in " + flags.LeaderNS + "?")
	}

	// The registry is the process's: count from here.
	restartLabels := map[string]string{"policy": "AlwaysOnUntilStoppedManually", "reason": "guest-reset"}
	restartsBefore := metricCount(t, metrics.VMRestartsName, restartLabels)
	resetsBefore := metricCount(t, metrics.VMShutdownsName, restartLabels)
	opsBefore := map[string]float64{}
	for _, typ := range []string{"Stop", "Start", "Restart"} {
		opsBefore[typ] = metricCount(t, metrics.VMOPDurationName, map[string]string{"type": typ, "result": "Completed"})
	}

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "chart-"}}
	g.Expect(admin.Create(ctx, ns)).To(Succeed())
	vm := fixture.VM(ns.Name, "vm", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)
	key := client.ObjectKeyFromObject(vm)
	g.Expect(admin.Create(ctx, vm)).To(Succeed())

	t.Log("the VM starts")
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
		g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineRunning))
	}).Should(Succeed())
	kvvm := &kvv1.VirtualMachine{}
	g.Expect(admin.Get(ctx, key, kvvm)).To(Succeed())
	g.Expect(kvvm.Spec.Template.ObjectMeta.Annotations).To(HaveKey("hooks.kubevirt.io/hookSidecars"))

	t.Log("a guest reboot restarts it")
	g.Expect(node.GuestReboot(ctx, ns.Name, "vm")).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
		g.Expect(vm.Status.RestartCount).To(BeEquivalentTo(1))
		g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineRunning))
		g.Expect(vm.Status.LastShutdown).NotTo(BeNil())
		g.Expect(vm.Status.LastShutdown.Source).To(Equal(v1alpha1.ShutdownGuestReset))
	}).Should(Succeed())
	g.Expect(node.VMIsCreated(ns.Name, "vm")).To(Equal(2))

	for _, step := range []struct {
		op    v1alpha1.VirtualMachineOperationType
		phase v1alpha1.VirtualMachinePhase
		vmis  int
	}{
		{v1alpha1.OperationStop, v1alpha1.VirtualMachineStopped, 2},
		{v1alpha1.OperationStart, v1alpha1.VirtualMachineRunning, 3},
		{v1alpha1.OperationRestart, v1alpha1.VirtualMachineRunning, 4},
	} {
		t.Logf("a VirtualMachineOperation %s completes", step.op)
		op := &v1alpha1.VirtualMachineOperation{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: strings.ToLower(string(step.op))},
			Spec:       v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: "vm", Type: step.op},
		}
		g.Expect(admin.Create(ctx, op)).To(Succeed())
		g.Eventually(func(g Gomega) {
			g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(op), op)).To(Succeed())
			g.Expect(op.Status.Phase).To(Equal(v1alpha1.OperationCompleted))
			g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
			g.Expect(vm.Status.Phase).To(Equal(step.phase))
		}).Should(Succeed())
		g.Expect(node.VMIsCreated(ns.Name, "vm")).To(Equal(step.vmis))
	}

	t.Log("its Events were recorded (events.k8s.io)")
	g.Eventually(func(g Gomega) []string {
		var evs eventsv1.EventList
		g.Expect(admin.List(ctx, &evs, client.InNamespace(ns.Name))).To(Succeed())
		reasons := make([]string, 0, len(evs.Items))
		for _, e := range evs.Items {
			reasons = append(reasons, e.Reason)
		}
		return reasons
	}).Should(ContainElements("GuestReset", "Completed"))

	t.Log("runpolicy's metrics counted the restart and the operations")
	g.Expect(metricCount(t, metrics.VMRestartsName, restartLabels) - restartsBefore).To(BeEquivalentTo(1))
	for typ, before := range opsBefore {
		g.Expect(metricCount(t, metrics.VMOPDurationName, map[string]string{"type": typ, "result": "Completed"})-before).
			To(BeEquivalentTo(1), typ)
	}

	t.Log("the shutdown counter and the state gauges (leader only, from the cache) follow the VM's status")
	g.Expect(metricCount(t, metrics.VMShutdownsName, restartLabels) - resetsBefore).To(BeEquivalentTo(1))
	g.Expect(metricCount(t, metrics.VMStatusRestartsName, map[string]string{"namespace": ns.Name, "name": "vm"})).To(BeEquivalentTo(1))
	g.Expect(metricCount(t, metrics.VMsName, map[string]string{"policy": "AlwaysOnUntilStoppedManually", "phase": "Running"})).
		To(BeNumerically(">=", 1))
	g.Expect(metricCount(t, metrics.VMOPsName, map[string]string{"type": "Restart", "phase": "Completed"})).To(BeNumerically(">=", 1))

	t.Log("the operator met no refusal on the way")
	g.Expect(logs.String()).NotTo(ContainSubstring("forbidden"), "a permission the operator needs is missing from the chart")

	t.Log("runStrategy changes of runpolicy's KubeVirt VMs by others are refused, with the policy named")
	checkKubeVirtGuard(ctx, t, g, env.Config, ns.Name, user)
	checkVirtctlObeysPolicy(ctx, t, g, env.Config, admin, ns.Name)
	checkUserRolesGrantNoStatus(ctx, g, admin, ns.Name, namespace+"-"+release)

	t.Log("only KubeVirt's virt-controller makes launcher pods; the operator knows it is guarded")
	checkLauncherPodGuard(ctx, t, g, env.Config, admin, ns.Name)
	g.Expect(metricCount(t, metrics.PodGuardName, nil)).To(BeEquivalentTo(1))
	g.Expect(logs.String()).NotTo(ContainSubstring("Running unguarded"))

	t.Log("without the launcher-pod policy the operator says it runs unguarded (log line, metric)")
	mustHelm(t, append([]string{"upgrade", release, chartDir(), "--reuse-values", "--set", "launcherPodGuard.enabled=false"}, kubeconfig...)...)
	g.Eventually(func() float64 { return metricCount(t, metrics.PodGuardName, nil) }).Should(BeEquivalentTo(0))
	g.Expect(logs.String()).To(ContainSubstring("Running unguarded"))
	mustHelm(t, append([]string{"upgrade", release, chartDir(), "--reuse-values", "--set", "launcherPodGuard.enabled=true"}, kubeconfig...)...)
	g.Eventually(func() float64 { return metricCount(t, metrics.PodGuardName, nil) }).Should(BeEquivalentTo(1))

	t.Log("what the ServiceAccount must not do is refused")
	sac, err := client.New(op.Config, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "s"}, StringData: map[string]string{"k": "v"}}
	g.Expect(admin.Create(ctx, secret)).To(Succeed())
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "disk"}, Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
	}}
	g.Expect(admin.Create(ctx, pvc)).To(Succeed())
	g.Expect(apierrors.IsForbidden(sac.Delete(ctx, kvvm))).To(BeTrue(), "delete kubevirt.io VirtualMachine")
	g.Expect(apierrors.IsForbidden(sac.Delete(ctx, secret))).To(BeTrue(), "delete Secret")
	g.Expect(apierrors.IsForbidden(sac.Get(ctx, client.ObjectKeyFromObject(secret), &corev1.Secret{}))).To(BeTrue(), "read Secret")
	g.Expect(apierrors.IsForbidden(sac.Delete(ctx, pvc))).To(BeTrue(), "delete PersistentVolumeClaim")
	g.Expect(apierrors.IsForbidden(sac.Delete(ctx, vm))).To(BeTrue(), "delete runpolicy.io VirtualMachine")
	g.Expect(apierrors.IsForbidden(sac.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "p"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}))).To(BeTrue(), "create Pod")
	// DataVolumes (CDI) are not installed here; RBAC answers without them.
	for _, a := range []authorizationv1.ResourceAttributes{
		{Namespace: ns.Name, Group: "cdi.kubevirt.io", Resource: "datavolumes", Verb: "delete"},
		{Namespace: ns.Name, Group: "kubevirt.io", Resource: "virtualmachines", Verb: "delete"},
		{Namespace: ns.Name, Group: "", Resource: "persistentvolumeclaims", Verb: "delete"},
		{Namespace: ns.Name, Group: "", Resource: "secrets", Verb: "list"},
		{Namespace: ns.Name, Group: "runpolicy.io", Resource: "virtualmachines", Verb: "update"},
		{Namespace: ns.Name, Group: "coordination.k8s.io", Resource: "leases", Verb: "update"}, // only in its own namespace
	} {
		g.Expect(allowed(ctx, g, admin, user, a)).To(BeFalse(), "%+v", a)
	}
	g.Expect(allowed(ctx, g, admin, user, authorizationv1.ResourceAttributes{Namespace: ns.Name, Group: "subresources.kubevirt.io",
		Resource: "virtualmachines", Subresource: "restart", Verb: "update"})).To(BeTrue(), "the check itself works")

	g.Expect(stopMgr()).To(Succeed())

	t.Log("helm upgrade")
	upgrade := append([]string{"upgrade", release, chartDir(), "--reuse-values", "--set", "replicas=3"}, kubeconfig...)
	t.Log(mustHelm(t, upgrade...))
	g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(deploy), deploy)).To(Succeed())
	g.Expect(deploy.Spec.Replicas).To(Equal(ptr.To[int32](3)))

	t.Log("helm uninstall keeps the CRDs, and with them the VMs")
	t.Log(mustHelm(t, append([]string{"uninstall", release}, kubeconfig...)...))
	g.Expect(apierrors.IsNotFound(admin.Get(ctx, client.ObjectKeyFromObject(deploy), deploy))).To(BeTrue())
	g.Expect(apierrors.IsNotFound(admin.Get(ctx, client.ObjectKey{Name: namespace + "-" + release + "-controller"}, &rbacv1.ClusterRole{}))).To(BeTrue())
	for _, crd := range crds.Items {
		g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(&crd), &apiextv1.CustomResourceDefinition{})).To(Succeed())
	}
	g.Expect(admin.Get(ctx, key, &v1alpha1.VirtualMachine{})).To(Succeed())
}

func established(crd *apiextv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextv1.Established && c.Status == apiextv1.ConditionTrue {
			return true
		}
	}
	return false
}

// allowed asks kube-apiserver's authorizer (RBAC) whether user may do a.
func allowed(ctx context.Context, g Gomega, admin client.Client, user string, a authorizationv1.ResourceAttributes) bool {
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
		ResourceAttributes: &a,
	}}
	g.Expect(admin.Create(ctx, sar)).To(Succeed())
	return sar.Status.Allowed
}

// metricCount returns a counter's or gauge's value or a histogram's sample count, for the metric of family name with
// exactly the given labels in controller-runtime's registry (which the manager's /metrics endpoint serves); 0 if absent.
func metricCount(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := crmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
			if gauge := m.GetGauge(); gauge != nil {
				return gauge.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// logBuffer keeps the operator's and the node layer's logs; they are shown when the test fails. (Not t.Log: their
// goroutines may still log after the test returned.)
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) dumpOnFailure(t *testing.T) {
	if !t.Failed() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := strings.Split(l.buf.String(), "\n")
	t.Logf("last %d log lines:\n%s", min(len(lines), 300), strings.Join(lines[max(0, len(lines)-300):], "\n"))
}
