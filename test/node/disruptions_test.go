//go:build !unit

package node

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/guest"
)

// restartWindows runs spec.disruptions on running guests: a changed spec of a VM with restartApprovalMode
// Automatic is applied through one Restart operation of runpolicy's own, under every policy that runs; with a
// restart window that is closed, the VM waits and says when; with Manual approval (the default) it waits for the
// user. Each VM boots the tiny guest, which then idles.
func restartWindows(t *testing.T, env *cluster.Env, admin client.Client) {
	g, ns := subtest(t, admin, "windows", 4*time.Minute)
	ctx := t.Context()
	created := watchVMIs(ctx, t, env, ns.Name)
	automatic := map[string]v1alpha1.RunPolicy{"on": v1alpha1.RunPolicyAlwaysOn, "manual": v1alpha1.RunPolicyManual,
		"until-stopped": v1alpha1.RunPolicyAlwaysOnUntilStoppedManually}
	opens := time.Now().UTC().Add(3 * time.Hour).Truncate(time.Minute)

	t.Log("Automatic approval under each running policy, Automatic with a window that opens in 3 h, and Manual approval")
	vms := map[string]*v1alpha1.VirtualMachine{}
	for name, p := range automatic {
		vms[name] = guest.VM(ns.Name, name, p, guestImage, "hang")
		vms[name].Spec.Disruptions = &v1alpha1.Disruptions{RestartApprovalMode: v1alpha1.RestartApprovalAutomatic}
	}
	vms["closed"] = guest.VM(ns.Name, "closed", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, guestImage, "hang")
	vms["closed"].Spec.Disruptions = &v1alpha1.Disruptions{RestartApprovalMode: v1alpha1.RestartApprovalAutomatic,
		Window: &v1alpha1.DisruptionWindow{Start: opens.Format("15:04"), Duration: metav1.Duration{Duration: time.Hour}}}
	vms["by-user"] = guest.VM(ns.Name, "by-user", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, guestImage, "hang")
	first := map[string]types.UID{}
	for name, obj := range vms {
		g.Expect(admin.Create(ctx, obj)).To(Succeed())
		if obj.Spec.RunPolicy == v1alpha1.RunPolicyManual {
			g.Eventually(func() error { return runVirtctl(ctx, env, "start", name, "-n", ns.Name) }, time.Minute).Should(Succeed())
		}
	}
	for name, obj := range vms {
		first[name] = runningVMI(ctx, g, admin, client.ObjectKeyFromObject(obj), "").UID
	}
	g.Consistently(func(g Gomega) []v1alpha1.VirtualMachineOperation { return applyOps(ctx, g, admin, ns.Name) }, "2s").
		Should(BeEmpty(), "nothing to apply, nothing to restart")

	t.Log("each VM's template changes")
	for _, obj := range vms {
		patch := []byte(`{"spec":{"template":{"metadata":{"annotations":{"test.runpolicy.io/rev":"2"}}}}}`)
		g.Expect(admin.Patch(ctx, &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: obj.Name}},
			client.RawPatch(types.MergePatchType, patch))).To(Succeed())
	}

	t.Log("Automatic: one Restart operation of runpolicy's own each, and a new VMI with the change")
	for name := range automatic {
		key := client.ObjectKey{Namespace: ns.Name, Name: name}
		var op v1alpha1.VirtualMachineOperation
		g.Eventually(func(g Gomega) {
			var mine []v1alpha1.VirtualMachineOperation
			for _, o := range applyOps(ctx, g, admin, ns.Name) {
				if o.Spec.VirtualMachineName == name {
					mine = append(mine, o)
				}
			}
			g.Expect(mine).To(HaveLen(1))
			op = mine[0]
			g.Expect(op.Status.Phase).To(Equal(v1alpha1.OperationCompleted))
		}).Should(Succeed(), name)
		g.Expect(op.Spec).To(Equal(v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: name, Type: v1alpha1.OperationRestart}))
		g.Expect(op.Labels).To(HaveKeyWithValue(vm.LabelMadeBy, vm.MadeByRunpolicy))
		cur := &v1alpha1.VirtualMachine{}
		g.Eventually(func(g Gomega) {
			g.Expect(admin.Get(ctx, key, cur)).To(Succeed())
			g.Expect(cur.Status.Phase).To(Equal(v1alpha1.VirtualMachineRunning))
			g.Expect(condStatus(cur, v1alpha1.ConditionAwaitingRestart)).To(Equal(metav1.ConditionFalse))
			g.Expect(cur.Status.AutomaticRestartOperation).To(Equal(op.Name))
		}).Should(Succeed(), name)
		g.Expect(metav1.IsControlledBy(&op, cur)).To(BeTrue())
		vmi := runningVMI(ctx, g, admin, key, first[name])
		g.Expect(vmi.Annotations).To(HaveKeyWithValue("test.runpolicy.io/rev", "2"))
	}

	t.Log("a closed window: the VM waits and says when it opens; Manual approval: the VM waits for the user")
	g.Eventually(func(g Gomega) {
		cur := &v1alpha1.VirtualMachine{}
		g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: "closed"}, cur)).To(Succeed())
		c := meta.FindStatusCondition(cur.Status.Conditions, v1alpha1.ConditionAwaitingRestart)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(c.Message).To(ContainSubstring(opens.Format(time.RFC3339)))
		g.Expect(cur.Status.NextAutomaticRestart).NotTo(BeNil())
		g.Expect(cur.Status.NextAutomaticRestart.Time.Equal(opens)).To(BeTrue(), "next restart %s, want %s",
			cur.Status.NextAutomaticRestart, opens)
		g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: "by-user"}, cur)).To(Succeed())
		g.Expect(condStatus(cur, v1alpha1.ConditionAwaitingRestart)).To(Equal(metav1.ConditionTrue))
	}).Should(Succeed())

	t.Log("no VM restarted twice, and the waiting ones not at all")
	g.Consistently(func(g Gomega) {
		for name := range automatic {
			g.Expect(created.count(name)).To(Equal(2), name)
		}
		g.Expect(created.count("closed")).To(Equal(1))
		g.Expect(created.count("by-user")).To(Equal(1))
		g.Expect(applyOps(ctx, g, admin, ns.Name)).To(HaveLen(len(automatic)))
	}, "3s").Should(Succeed())
	for _, name := range []string{"closed", "by-user"} {
		cur := &kvv1.VirtualMachineInstance{}
		g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: name}, cur)).To(Succeed())
		g.Expect(cur.UID).To(Equal(first[name]))
		g.Expect(cur.Status.Phase).To(Equal(kvv1.Running))
	}
	g.Expect(admin.Delete(ctx, ns)).To(Succeed()) // its guests would slow the subtests that follow
}

// applyOps lists the operations runpolicy made to apply a changed spec.
func applyOps(ctx context.Context, g Gomega, c client.Client, ns string) []v1alpha1.VirtualMachineOperation {
	var list v1alpha1.VirtualMachineOperationList
	g.Expect(c.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{vm.LabelReason: vm.ReasonApplyChanges})).To(Succeed())
	return list.Items
}
