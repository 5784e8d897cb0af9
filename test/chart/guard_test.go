//go:build !unit

package chart

import (
	"context"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/test/fixture"
	"github.com/runpolicy/runpolicy/test/kubevirt"
)

// KubeVirt's identities and the garbage collector's, as kube-apiserver names them.
const (
	virtAPIUser        = "system:serviceaccount:kubevirt:kubevirt-apiserver"
	virtControllerUser = "system:serviceaccount:kubevirt:kubevirt-controller"
	garbageCollector   = "system:kube-controller-manager"
)

// impersonating returns a client acting as user with system:masters, so that RBAC lets everything through: only an
// admission policy can refuse.
func impersonating(g Gomega, cfg *rest.Config, user string) client.Client {
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:masters"}}
	cl, err := client.New(c, client.Options{Scheme: controllers.NewScheme()})
	g.Expect(err).NotTo(HaveOccurred())
	return cl
}

// refused asserts that err is an admission refusal whose message has every part of want.
func refused(g Gomega, err error, want ...string) {
	g.ExpectWithOffset(1, apierrors.IsForbidden(err) || apierrors.IsInvalid(err)).To(BeTrue(), "must be refused, got %v", err)
	for _, w := range want {
		g.ExpectWithOffset(1, err.Error()).To(ContainSubstring(w))
	}
}

// checkKubeVirtGuard checks the chart's ValidatingAdmissionPolicies on the KubeVirt VMs runpolicy controls, found by
// their controller ownerReference (not by a label: these VMs carry none): a runStrategy change by anyone but the
// operator is refused with a message naming the policy and what to do instead (the operator's own changes, and
// everything else anyone does, pass); the ownerReference, runpolicy's label and annotations stay the operator's; their
// status (KubeVirt's start and stop requests) is KubeVirt's and the operator's; a status write of a runpolicy VM by
// anyone but the operator is refused.
func checkKubeVirtGuard(ctx context.Context, t *testing.T, g Gomega, cfg *rest.Config, ns, operator string) {
	t.Helper()
	virtAPI, op, someone := impersonating(g, cfg, virtAPIUser), impersonating(g, cfg, operator), impersonating(g, cfg, "someone")
	patch := func(c client.Client, name, body string) error {
		obj := &kvv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		return c.Patch(ctx, obj, client.RawPatch(types.MergePatchType, []byte(body)))
	}
	patchStatus := func(c client.Client, name, body string) error {
		obj := &kvv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		return c.Status().Patch(ctx, obj, client.RawPatch(types.MergePatchType, []byte(body)))
	}
	// The owner: a runpolicy VM the KubeVirt VMs below point at. They have other names, so the operator leaves them
	// alone and the policies alone decide.
	owner := fixture.VM(ns, "guard-owner", v1alpha1.RunPolicyAlwaysOff)
	g.Expect(someone.Create(ctx, owner)).To(Succeed())
	defer func() { g.Expect(client.IgnoreNotFound(someone.Delete(ctx, owner))).To(Succeed()) }()
	controlled := func(name, policy, strategy string) *kvv1.VirtualMachine {
		return &kvv1.VirtualMachine{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{vm.AnnotationRunPolicy: policy},
				OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(owner, v1alpha1.GroupVersion.WithKind("VirtualMachine"))}},
			Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.VirtualMachineRunStrategy(strategy)),
				Template: fixture.VM(ns, name, "").Spec.Template},
		}
	}
	for _, c := range []struct {
		policy, from, to string
		want             []string
	}{
		{"AlwaysOff", "Halted", "Always", []string{"runPolicy AlwaysOff", "To start it, set spec.runPolicy", "guard-alwaysoff"}},
		{"AlwaysOn", "Always", "Halted", []string{"runPolicy AlwaysOn", "To stop it, set spec.runPolicy", "AlwaysOff"}},
		{"Manual", "Manual", "Always", []string{"runPolicy Manual", "Change spec.runPolicy", "VirtualMachineOperation"}},
	} {
		name := "guard-" + strings.ToLower(c.policy)
		kv := controlled(name, c.policy, c.from)
		g.Expect(op.Create(ctx, kv)).To(Succeed(), "creating is never refused")
		defer func() { g.Expect(client.IgnoreNotFound(op.Delete(ctx, kv))).To(Succeed()) }()

		refused(g, patch(virtAPI, name, `{"spec":{"runStrategy":"`+c.to+`"}}`), c.want...)
		g.Expect(patch(virtAPI, name, `{"metadata":{"annotations":{"kubevirt.io/latest-observed-api-version":"v1"}}}`)).
			To(Succeed(), "%s: other changes by KubeVirt pass", c.policy)
		g.Expect(patch(op, name, `{"spec":{"runStrategy":"`+c.to+`"}}`)).To(Succeed(), "%s: the operator sets runStrategy", c.policy)
	}

	t.Log("the ownerReference, runpolicy's label and annotations stay the operator's")
	refused(g, patch(someone, "guard-manual", `{"metadata":{"ownerReferences":null}}`), "controller ownerReference stays")
	refused(g, patch(someone, "guard-manual", `{"metadata":{"labels":{"`+vm.LabelManagedBy+`":"someone"}}}`),
		"written by the runpolicy operator only")
	refused(g, patch(someone, "guard-manual", `{"metadata":{"annotations":{"`+vm.AnnotationRunPolicy+`":"AlwaysOn"}}}`),
		"written by the runpolicy operator only")
	g.Expect(patch(someone, "guard-manual", `{"metadata":{"labels":{"team":"a"}}}`)).To(Succeed(), "other labels are anyone's")

	t.Log("the status of a controlled KubeVirt VM (its start and stop requests) is KubeVirt's and the operator's")
	start := `{"status":{"stateChangeRequests":[{"action":"Start"}]}}`
	refused(g, patchStatus(someone, "guard-alwaysoff", start), "written only by KubeVirt and runpolicy")
	for _, user := range []string{virtAPIUser, virtControllerUser, operator} {
		g.Expect(patchStatus(impersonating(g, cfg, user), "guard-alwaysoff", `{"status":{"stateChangeRequests":[]}}`)).
			To(Succeed(), "%s writes the status", user)
	}

	t.Log("the garbage collector releases a dependent when its owner is deleted with --cascade=orphan")
	g.Expect(patch(impersonating(g, cfg, garbageCollector), "guard-manual", `{"metadata":{"ownerReferences":null}}`)).To(Succeed())
	g.Expect(patch(virtAPI, "guard-manual", `{"spec":{"runStrategy":"Halted"}}`)).To(Succeed(), "a released VM is nobody's business")
	g.Expect(patchStatus(someone, "guard-manual", `{"status":{"stateChangeRequests":[]}}`)).To(Succeed())

	// Status is the operator's trusted state: nobody else writes it, not even with the rights to.
	rvm := fixture.VM(ns, "guard-status", v1alpha1.RunPolicyAlwaysOff)
	g.Expect(someone.Create(ctx, rvm)).To(Succeed())
	defer func() { g.Expect(client.IgnoreNotFound(someone.Delete(ctx, rvm))).To(Succeed()) }()
	forged := rvm.DeepCopy()
	forged.Status.HandledVMIUID = "forged"
	refused(g, someone.Status().Patch(ctx, forged, client.MergeFrom(rvm)), "written by the runpolicy operator only")
	g.Expect(op.Status().Patch(ctx, forged, client.MergeFrom(rvm))).To(Succeed(), "the operator writes status")

	unmanaged := &kvv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "guard-theirs",
		Labels: map[string]string{vm.LabelManagedBy: vm.ManagedByValue}},
		Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyHalted), Template: fixture.VM(ns, "guard-theirs", "").Spec.Template}}
	g.Expect(virtAPI.Create(ctx, unmanaged)).To(Succeed())
	defer func() { g.Expect(client.IgnoreNotFound(op.Delete(ctx, unmanaged))).To(Succeed()) }()
	g.Expect(patch(virtAPI, "guard-theirs", `{"spec":{"runStrategy":"Manual"}}`)).
		To(Succeed(), "KubeVirt VMs runpolicy does not control are not its business, whatever their labels")
	g.Expect(patchStatus(someone, "guard-theirs", `{"status":{"stateChangeRequests":[]}}`)).To(Succeed())
}

// checkVirtctlObeysPolicy calls virt-api's start and stop subresources as virtctl does, as a namespace user would,
// on runpolicy VMs whose policy forbids them: real virt-api turns them into runStrategy changes, which the chart's
// policy refuses with the policy named, so nothing flaps (no VMI is created for an AlwaysOff VM, the AlwaysOn VMI
// keeps running).
func checkVirtctlObeysPolicy(ctx context.Context, t *testing.T, g Gomega, cfg *rest.Config, admin client.Client, ns string) {
	t.Helper()
	rc, err := kubevirt.NewSubresourceClient(cfg)
	g.Expect(err).NotTo(HaveOccurred())
	off, on := fixture.VM(ns, "virtctl-off", v1alpha1.RunPolicyAlwaysOff), fixture.VM(ns, "virtctl-on", v1alpha1.RunPolicyAlwaysOn)
	for _, v := range []*v1alpha1.VirtualMachine{off, on} {
		g.Expect(admin.Create(ctx, v)).To(Succeed())
		defer func() { g.Expect(client.IgnoreNotFound(admin.Delete(ctx, v))).To(Succeed()) }()
	}
	g.Eventually(func(g Gomega) {
		for _, v := range []*v1alpha1.VirtualMachine{off, on} {
			got := &v1alpha1.VirtualMachine{}
			g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(v), got)).To(Succeed())
			want := map[v1alpha1.RunPolicy]v1alpha1.VirtualMachinePhase{v1alpha1.RunPolicyAlwaysOff: v1alpha1.VirtualMachineStopped,
				v1alpha1.RunPolicyAlwaysOn: v1alpha1.VirtualMachineRunning}[v.Spec.RunPolicy]
			g.Expect(got.Status.Phase).To(Equal(want), v.Name)
		}
	}).Should(Succeed())
	running := &kvv1.VirtualMachineInstance{}
	g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(on), running)).To(Succeed())

	err = kubevirt.PutVMSubresource(ctx, rc, ns, off.Name, "start", &kvv1.StartOptions{})
	g.Expect(err).To(HaveOccurred(), "virtctl start of an AlwaysOff VM")
	g.Expect(err.Error()).To(ContainSubstring("runPolicy AlwaysOff"))
	err = kubevirt.PutVMSubresource(ctx, rc, ns, on.Name, "stop", &kvv1.StopOptions{})
	g.Expect(err).To(HaveOccurred(), "virtctl stop of an AlwaysOn VM")
	g.Expect(err.Error()).To(ContainSubstring("runPolicy AlwaysOn"))
	g.Consistently(func(g Gomega) {
		g.Expect(apierrors.IsNotFound(admin.Get(ctx, client.ObjectKeyFromObject(off), &kvv1.VirtualMachineInstance{}))).
			To(BeTrue(), "a VMI was started for the AlwaysOff VM")
		vmi := &kvv1.VirtualMachineInstance{}
		g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(on), vmi)).To(Succeed())
		g.Expect(vmi.UID).To(Equal(running.UID))
		g.Expect(vmi.DeletionTimestamp).To(BeNil(), "the AlwaysOn VMI was stopped")
	}, "3s").Should(Succeed())
	t.Logf("virtctl refusals as virt-api answers them: %v", err)
}

// checkUserRolesGrantNoStatus binds the chart's aggregated user roles (what `edit` and `view` get) to a user and
// checks that they manage runpolicy's VMs and operations but cannot write their status, runpolicy's trusted state.
func checkUserRolesGrantNoStatus(ctx context.Context, g Gomega, admin client.Client, ns, prefix string) {
	const user = "namespace-editor"
	for _, role := range []string{prefix + "-view", prefix + "-edit"} {
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: role},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
			Subjects: []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: user}}}
		g.Expect(admin.Create(ctx, rb)).To(Succeed())
	}
	can := func(res, sub, verb string) bool {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Group: "runpolicy.io", Resource: res,
				Subresource: sub, Verb: verb}}}
		g.Expect(admin.Create(ctx, sar)).To(Succeed())
		return sar.Status.Allowed
	}
	for _, res := range []string{"virtualmachines", "virtualmachineoperations"} {
		// kube-apiserver's RBAC authorizer sees the new RoleBindings once its informer has them.
		g.Eventually(func() bool { return can(res, "", "create") }).Should(BeTrue(), "the aggregated roles manage %s", res)
		g.Expect(can(res, "status", "get")).To(BeTrue(), "the aggregated roles read %s/status", res)
		for _, verb := range []string{"update", "patch"} {
			g.Expect(can(res, "status", verb)).To(BeFalse(), "%s %s/status must not be granted", verb, res)
		}
	}
}

// checkLauncherPodGuard checks the chart's launcher-pod policy: the launcher pod real virt-controller made for a
// running VMI exists (KubeVirt's own pods pass), while a namespace user's pod with a controller ownerReference to
// that VMI, or with virt-launcher's labels, is refused at admission, and so is an update that adds them to a pod.
func checkLauncherPodGuard(ctx context.Context, t *testing.T, g Gomega, cfg *rest.Config, admin client.Client, ns string) {
	t.Helper()
	on := fixture.VM(ns, "podguard", v1alpha1.RunPolicyAlwaysOn)
	g.Expect(admin.Create(ctx, on)).To(Succeed())
	defer func() { g.Expect(client.IgnoreNotFound(admin.Delete(ctx, on))).To(Succeed()) }()
	vmi := &kvv1.VirtualMachineInstance{}
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(on), vmi)).To(Succeed())
		g.Expect(vmi.Status.Phase).To(Equal(kvv1.Running))
	}).Should(Succeed())
	var pods corev1.PodList
	g.Expect(admin.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{kvv1.CreatedByLabel: string(vmi.UID)})).To(Succeed())
	g.Expect(pods.Items).To(HaveLen(1), "virt-controller's launcher pod, created under the policy")
	g.Expect(metav1.IsControlledBy(&pods.Items[0], vmi)).To(BeTrue())

	someone := impersonating(g, cfg, "someone")
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "hook-sidecar-0", Image: "busybox",
				Command: []string{"sh", "-c", "echo '{\"reason\":\"guest-reset\"}' > /dev/termination-log"}}}}}
	}
	const msg = "are created and changed only by KubeVirt (" + virtControllerUser + ")"
	forged := pod("forged-owner")
	forged.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(vmi, kvv1.VirtualMachineInstanceGroupVersionKind)}
	refused(g, someone.Create(ctx, forged), msg)
	labelled := pod("forged-labels")
	labelled.Labels = map[string]string{"kubevirt.io": "virt-launcher", kvv1.CreatedByLabel: string(vmi.UID)}
	refused(g, someone.Create(ctx, labelled), msg)

	plain := pod("plain")
	g.Expect(someone.Create(ctx, plain)).To(Succeed(), "other pods are anyone's")
	defer func() { g.Expect(client.IgnoreNotFound(admin.Delete(ctx, plain))).To(Succeed()) }()
	adopted := plain.DeepCopy()
	adopted.OwnerReferences = forged.OwnerReferences
	refused(g, someone.Patch(ctx, adopted, client.MergeFrom(plain)), msg)
	relabelled := plain.DeepCopy()
	relabelled.Labels = map[string]string{"team": "a"}
	g.Expect(someone.Patch(ctx, relabelled, client.MergeFrom(plain))).To(Succeed(), "other changes pass")

	// The launcher pod virt-controller made: others may label it, not change what makes it a launcher pod.
	launcher := pods.Items[0].DeepCopy()
	labelledLauncher := launcher.DeepCopy()
	labelledLauncher.Labels["team"] = "a"
	g.Expect(someone.Patch(ctx, labelledLauncher, client.MergeFrom(launcher))).To(Succeed())
	stolen := labelledLauncher.DeepCopy()
	stolen.Labels[kvv1.CreatedByLabel] = "another-vmi"
	refused(g, someone.Patch(ctx, stolen, client.MergeFrom(labelledLauncher)), msg)

	// (Labels alone: a second pod controlled by the running VMI would be KubeVirt's problem.)
	byKubeVirt := pod("by-virt-controller")
	byKubeVirt.Labels = map[string]string{"kubevirt.io": "virt-launcher", kvv1.CreatedByLabel: "no-such-vmi"}
	g.Expect(impersonating(g, cfg, virtControllerUser).Create(ctx, byKubeVirt)).To(Succeed(), "virt-controller makes launcher pods")
	g.Expect(admin.Delete(ctx, byKubeVirt)).To(Succeed())

	t.Log("a live migration's target pod, which real virt-controller makes for a VirtualMachineInstanceMigration, passes")
	vmim := &kvv1.VirtualMachineInstanceMigration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "podguard"},
		Spec: kvv1.VirtualMachineInstanceMigrationSpec{VMIName: vmi.Name}}
	g.Expect(admin.Create(ctx, vmim)).To(Succeed())
	defer func() { g.Expect(client.IgnoreNotFound(admin.Delete(ctx, vmim))).To(Succeed()) }()
	g.Eventually(func(g Gomega) {
		var targets corev1.PodList
		g.Expect(admin.List(ctx, &targets, client.InNamespace(ns), client.MatchingLabels{kvv1.MigrationJobLabel: string(vmim.UID)})).To(Succeed())
		g.Expect(targets.Items).To(HaveLen(1), "virt-controller's migration target pod")
		g.Expect(metav1.IsControlledBy(&targets.Items[0], vmi)).To(BeTrue())
	}).Should(Succeed())
}
