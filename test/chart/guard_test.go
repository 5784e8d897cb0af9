//go:build !unit

package chart

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	authorizationv1 "k8s.io/api/authorization/v1"
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

// virtAPIUser is the identity virt-api patches a VM's runStrategy with when it serves virtctl start or stop of a
// VM on runStrategy Halted or Always.
const virtAPIUser = "system:serviceaccount:kubevirt:kubevirt-apiserver"

// checkKubeVirtGuard checks the chart's ValidatingAdmissionPolicies: a runStrategy change of runpolicy's KubeVirt
// VMs by anyone but the operator is refused with a message naming the policy and what to do instead (the operator's
// own changes, and everything else anyone does, pass); a status write of a runpolicy VM by anyone but the operator
// is refused.
func checkKubeVirtGuard(ctx context.Context, t *testing.T, g Gomega, cfg *rest.Config, ns, operator string) {
	t.Helper()
	as := func(user string) client.Client {
		c := rest.CopyConfig(cfg)
		// system:masters so that RBAC lets everything through: only the admission policy can refuse.
		c.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:masters"}}
		cl, err := client.New(c, client.Options{Scheme: controllers.NewScheme()})
		g.Expect(err).NotTo(HaveOccurred())
		return cl
	}
	virtAPI, op := as(virtAPIUser), as(operator)
	patch := func(c client.Client, name, body string) error {
		obj := &kvv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		return c.Patch(ctx, obj, client.RawPatch(types.MergePatchType, []byte(body)))
	}
	for _, c := range []struct {
		policy, from, to string
		want             []string
	}{
		{"AlwaysOff", "Halted", "Always", []string{"runPolicy AlwaysOff", "To start it, set spec.runPolicy", "guard-alwaysoff"}},
		{"AlwaysOn", "Always", "Halted", []string{"runPolicy AlwaysOn", "To stop it, set spec.runPolicy", "AlwaysOff"}},
		{"Manual", "Manual", "Always", []string{"runPolicy Manual", "Change spec.runPolicy", "VirtualMachineOperation"}},
	} {
		name := "guard-" + map[string]string{"AlwaysOff": "alwaysoff", "AlwaysOn": "alwayson", "Manual": "manual"}[c.policy]
		kv := &kvv1.VirtualMachine{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{vm.LabelManagedBy: vm.ManagedByValue},
				Annotations: map[string]string{vm.AnnotationRunPolicy: c.policy}},
			Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.VirtualMachineRunStrategy(c.from)),
				Template: fixture.VM(ns, name, "").Spec.Template},
		}
		g.Expect(op.Create(ctx, kv)).To(Succeed(), "creating is never refused")
		defer func() { g.Expect(client.IgnoreNotFound(op.Delete(ctx, kv))).To(Succeed()) }()

		err := patch(virtAPI, name, `{"spec":{"runStrategy":"`+c.to+`"}}`)
		g.Expect(apierrors.IsForbidden(err) || apierrors.IsInvalid(err)).To(BeTrue(), "%s: virt-api's runStrategy change must be refused, got %v", c.policy, err)
		for _, w := range c.want {
			g.Expect(err.Error()).To(ContainSubstring(w), c.policy)
		}
		g.Expect(patch(virtAPI, name, `{"metadata":{"annotations":{"kubevirt.io/latest-observed-api-version":"v1"}}}`)).
			To(Succeed(), "%s: other changes by KubeVirt pass", c.policy)
		g.Expect(patch(op, name, `{"spec":{"runStrategy":"`+c.to+`"}}`)).To(Succeed(), "%s: the operator sets runStrategy", c.policy)
	}

	// Status is the operator's trusted state: nobody else writes it, not even with the rights to.
	someone := as("someone")
	rvm := fixture.VM(ns, "guard-status", v1alpha1.RunPolicyAlwaysOff)
	g.Expect(someone.Create(ctx, rvm)).To(Succeed())
	defer func() { g.Expect(client.IgnoreNotFound(someone.Delete(ctx, rvm))).To(Succeed()) }()
	forged := rvm.DeepCopy()
	forged.Status.HandledVMIUID = "forged"
	err := someone.Status().Patch(ctx, forged, client.MergeFrom(rvm))
	g.Expect(apierrors.IsForbidden(err) || apierrors.IsInvalid(err)).To(BeTrue(), "a status write by someone else must be refused, got %v", err)
	g.Expect(err.Error()).To(ContainSubstring("written by the runpolicy operator only"))
	g.Expect(op.Status().Patch(ctx, forged, client.MergeFrom(rvm))).To(Succeed(), "the operator writes status")

	unmanaged := &kvv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "guard-theirs"},
		Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyHalted), Template: fixture.VM(ns, "guard-theirs", "").Spec.Template}}
	g.Expect(virtAPI.Create(ctx, unmanaged)).To(Succeed())
	defer func() { g.Expect(client.IgnoreNotFound(op.Delete(ctx, unmanaged))).To(Succeed()) }()
	g.Expect(patch(virtAPI, "guard-theirs", `{"spec":{"runStrategy":"Manual"}}`)).To(Succeed(), "KubeVirt VMs runpolicy does not manage are not its business")
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
		g.Expect(can(res, "", "create")).To(BeTrue(), "the aggregated roles manage %s", res)
		g.Expect(can(res, "status", "get")).To(BeTrue(), "the aggregated roles read %s/status", res)
		for _, verb := range []string{"update", "patch"} {
			g.Expect(can(res, "status", verb)).To(BeFalse(), "%s %s/status must not be granted", verb, res)
		}
	}
}
