package vmop

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// TestMigrationFoundAfterCrash: a pass that created the operation's migration and ended before it wrote the status
// (an operator crash) leaves a migration named after the operation; the next pass records it as sent and creates no
// other, for a Migrate and for an Evict (which records that it migrates). A migration of that name the operation
// does not control is never taken for its own.
func TestMigrationFoundAfterCrash(t *testing.T) {
	for _, tc := range []struct {
		name      string
		typ       v1alpha1.VirtualMachineOperationType
		ours      bool
		wantPhase v1alpha1.VirtualMachineOperationPhase
	}{
		{"Migrate", v1alpha1.OperationMigrate, true, v1alpha1.OperationInProgress},
		{"Evict", v1alpha1.OperationEvict, true, v1alpha1.OperationInProgress},
		{"a migration of its name it does not control", v1alpha1.OperationMigrate, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			vm := &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "vm", UID: "vm-uid"},
				Spec: v1alpha1.VirtualMachineSpec{RunPolicy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually}}
			kv := &kvv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "vm",
				OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(vm, v1alpha1.GroupVersion.WithKind("VirtualMachine"))}}}
			vmi := &kvv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "vm", UID: "vmi-uid"},
				Status: kvv1.VirtualMachineInstanceStatus{Phase: kvv1.Running, NodeName: "node-1",
					Conditions: []kvv1.VirtualMachineInstanceCondition{{Type: kvv1.VirtualMachineInstanceIsMigratable, Status: corev1.ConditionTrue}}}}
			op := &v1alpha1.VirtualMachineOperation{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "op", UID: "op-uid"},
				Spec: v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: "vm", Type: tc.typ}}
			left := &kvv1.VirtualMachineInstanceMigration{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "op"},
				Spec: kvv1.VirtualMachineInstanceMigrationSpec{VMIName: "vm"}}
			if tc.ours {
				left.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(op, v1alpha1.GroupVersion.WithKind("VirtualMachineOperation"))}
			}
			scheme := runtime.NewScheme()
			for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, v1alpha1.AddToScheme, kvv1.AddToScheme} {
				if err := add(scheme); err != nil {
					t.Fatal(err)
				}
			}
			c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(vm, kv, vmi, op, left).
				WithStatusSubresource(&v1alpha1.VirtualMachineOperation{}).
				WithIndex(&v1alpha1.VirtualMachineOperation{}, IndexVMName, func(o client.Object) []string {
					return []string{o.(*v1alpha1.VirtualMachineOperation).Spec.VirtualMachineName}
				}).Build()
			r := &Reconciler{Client: c, APIReader: c}

			_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(op)})
			if !tc.ours {
				if err == nil {
					t.Fatal("a migration of the operation's name that it does not control was not reported")
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if err := c.Get(ctx, client.ObjectKeyFromObject(op), op); err != nil {
				t.Fatal(err)
			}
			if op.Status.Phase != tc.wantPhase {
				t.Fatalf("phase %q, want %q; conditions %+v", op.Status.Phase, tc.wantPhase, op.Status.Conditions)
			}
			var list kvv1.VirtualMachineInstanceMigrationList
			if err := c.List(ctx, &list); err != nil {
				t.Fatal(err)
			}
			if len(list.Items) != 1 {
				t.Fatalf("%d migrations, want only the one left behind", len(list.Items))
			}
			if !tc.ours {
				return
			}
			if !meta.IsStatusConditionTrue(op.Status.Conditions, v1alpha1.OperationConditionSignalSent) ||
				op.Status.Migration == nil || op.Status.Migration.Name != "op" {
				t.Errorf("not recorded as sent: %+v", op.Status)
			}
			if tc.typ == v1alpha1.OperationEvict &&
				(op.Status.Eviction == nil || op.Status.Eviction.Method != v1alpha1.EvictionLiveMigration) {
				t.Errorf("an Evict that found its migration must record that it migrates: %+v", op.Status.Eviction)
			}
		})
	}
}
