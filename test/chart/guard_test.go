package chart

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
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
