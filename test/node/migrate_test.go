//go:build !unit

package node

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/guest"
)

// migrate asks for a live migration with `kubectl runpolicy migrate --wait` on the one-node cluster: runpolicy
// creates one VirtualMachineInstanceMigration, the real virt-controller creates its target pod, which no node can
// take (KubeVirt keeps a VMI's migration target off its source node), and KubeVirt fails the migration once the
// target pod has been unschedulable for the migration's timeout (its annotation, set here to 20 s: a user's
// setting; KubeVirt's default is 5 min). The operation ends Failed with KubeVirt's reason, the plugin exits
// non-zero, and the VM keeps running on its VMI. `kubectl runpolicy evict` then takes the same way: KubeVirt calls the
// VMI live-migratable, so the Evict is a live migration, never a restart.
func migrate(t *testing.T, env *cluster.Env, admin client.Client, dir string) {
	g, ns := subtest(t, admin, "migrate", 4*time.Minute)
	ctx := t.Context()
	vm := guest.VM(ns.Name, "vm", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, guestImage, "hang")
	key := client.ObjectKeyFromObject(vm)
	g.Expect(admin.Create(ctx, vm)).To(Succeed())

	t.Log("the VMI runs, and virt-handler reports it live-migratable")
	vmi := &kvv1.VirtualMachineInstance{}
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, vmi)).To(Succeed())
		g.Expect(vmi.Status.Phase).To(Equal(kvv1.Running))
		g.Expect(vmi.Status.Conditions).To(ContainElement(And(HaveField("Type", kvv1.VirtualMachineInstanceIsMigratable),
			HaveField("Status", corev1.ConditionTrue))))
	}).Should(Succeed())

	t.Log("a migration someone else created: kubectl runpolicy migrate --wait is refused (MigrationInProgress)")
	theirs := &kvv1.VirtualMachineInstanceMigration{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "theirs",
		Annotations: map[string]string{kvv1.MigrationUnschedulablePodTimeoutSecondsAnnotation: "20"}},
		Spec: kvv1.VirtualMachineInstanceMigrationSpec{VMIName: vm.Name}}
	g.Expect(admin.Create(ctx, theirs)).To(Succeed())
	out, err := exec.CommandContext(ctx, filepath.Join(dir, "kubectl-runpolicy"), "migrate", "vm", "-n", ns.Name,
		"--kubeconfig", env.Kubeconfig, "--wait", "--timeout", "2m").CombinedOutput()
	t.Logf("kubectl runpolicy migrate: %s", out)
	g.Expect(err).To(HaveOccurred())
	g.Expect(string(out)).To(And(ContainSubstring(v1alpha1.OperationReasonMigrationInProgress), ContainSubstring("theirs")))
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(theirs), theirs)).To(Succeed())
		g.Expect(theirs.Status.Phase).To(Equal(kvv1.MigrationFailed))
	}).Should(Succeed(), "KubeVirt fails their migration: no node for its target pod")

	t.Log("kubectl runpolicy migrate vm --wait: one migration, its target pod unschedulable on the one node")
	op := failedMigration(ctx, t, g, env, admin, dir, ns.Name, "migrate")
	g.Expect(op.Spec.Type).To(Equal(v1alpha1.OperationMigrate))
	g.Expect(op.Status.Eviction).To(BeNil())

	t.Log("kubectl runpolicy evict vm --wait: KubeVirt calls the VMI live-migratable, so the Evict migrates it " +
		"(never restarts it), and fails as the migration does")
	op = failedMigration(ctx, t, g, env, admin, dir, ns.Name, "evict")
	g.Expect(op.Spec.Type).To(Equal(v1alpha1.OperationEvict))
	g.Expect(op.Status.Eviction).To(HaveValue(And(HaveField("Method", v1alpha1.EvictionLiveMigration),
		HaveField("SourceNode", cluster.NodeName), HaveField("TargetNode", ""))))

	t.Log("the VM keeps running on its VMI, and each operation made one migration")
	g.Consistently(func(g Gomega) {
		cur := &kvv1.VirtualMachineInstance{}
		g.Expect(admin.Get(ctx, key, cur)).To(Succeed())
		g.Expect(cur.UID).To(Equal(vmi.UID))
		g.Expect(cur.Status.Phase).To(Equal(kvv1.Running))
		var list kvv1.VirtualMachineInstanceMigrationList
		g.Expect(admin.List(ctx, &list, client.InNamespace(ns.Name))).To(Succeed())
		g.Expect(list.Items).To(HaveLen(3), "theirs, and one per operation that started one")
	}, "3s").Should(Succeed())
	g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
	g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineRunning))
	g.Expect(admin.Delete(ctx, ns)).To(Succeed()) // its guest would slow the subtests that follow
}

// failedMigration runs `kubectl runpolicy VERB vm --wait` (migrate or evict), finds the one migration its operation
// made, has KubeVirt fail it 20 s after its target pod turned out unschedulable, and checks that the plugin exits
// non-zero with KubeVirt's account and that the operation ended Failed with the migration. It returns the operation.
func failedMigration(ctx context.Context, t *testing.T, g Gomega, env *cluster.Env, admin client.Client, dir, ns, verb string) *v1alpha1.VirtualMachineOperation {
	plugin := filepath.Join(dir, "kubectl-runpolicy")
	done := make(chan []byte, 1)
	var waitErr error
	go func() {
		out, err := exec.CommandContext(ctx, plugin, verb, "vm", "-n", ns, "--kubeconfig", env.Kubeconfig,
			"--wait", "--timeout", "4m").CombinedOutput()
		waitErr = err
		done <- out
	}()
	vmim := &kvv1.VirtualMachineInstanceMigration{}
	g.Eventually(func(g Gomega) {
		var list kvv1.VirtualMachineInstanceMigrationList
		g.Expect(admin.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
		var ours []kvv1.VirtualMachineInstanceMigration
		for _, m := range list.Items {
			if strings.HasPrefix(m.Name, "vm-"+verb+"-") {
				ours = append(ours, m)
			}
		}
		g.Expect(ours).To(HaveLen(1))
		*vmim = ours[0]
	}).Should(Succeed())
	g.Expect(vmim.Spec.VMIName).To(Equal("vm"))
	g.Expect(vmim.OwnerReferences).To(ConsistOf(HaveField("Kind", "VirtualMachineOperation")))
	patch := client.MergeFrom(vmim.DeepCopy())
	if vmim.Annotations == nil {
		vmim.Annotations = map[string]string{}
	}
	vmim.Annotations[kvv1.MigrationUnschedulablePodTimeoutSecondsAnnotation] = "20"
	g.Expect(admin.Patch(ctx, vmim, patch)).To(Succeed())

	var out []byte
	g.Eventually(done).Should(Receive(&out))
	t.Logf("kubectl runpolicy %s: %s", verb, out)
	g.Expect(waitErr).To(HaveOccurred(), "the migration failed: the plugin exits non-zero")
	g.Expect(string(out)).To(And(ContainSubstring(v1alpha1.OperationReasonMigrationFailed), ContainSubstring("unschedulable")),
		"KubeVirt's account, from its Events on the migration")

	op := &v1alpha1.VirtualMachineOperation{}
	g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: vmim.Name}, op)).To(Succeed())
	g.Expect(op.Status.Phase).To(Equal(v1alpha1.OperationFailed))
	g.Expect(op.Status.Migration).To(HaveValue(And(HaveField("Name", vmim.Name), HaveField("Phase", string(kvv1.MigrationFailed)),
		HaveField("SourceNode", cluster.NodeName))))
	return op
}
