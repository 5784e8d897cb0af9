package kubevirt

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/validation"
	virtv1 "kubevirt.io/api/core/v1"
)

// The launcher pod name must look like kube-apiserver's answer to KubeVirt's generateName and still be derivable
// from the VMI alone, since launcherPods finds the pod by it.
func TestLauncherPodName(t *testing.T) {
	vmi := func(name string, uid types.UID) *virtv1.VirtualMachineInstance {
		return &virtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Name: name, UID: uid}}
	}
	seen := map[string]bool{}
	for i := range 1000 {
		uid := uuid.NewUUID()
		name := launcherPodName(vmi("vm", uid))
		if name != launcherPodName(vmi("vm", uid)) {
			t.Fatalf("the name of the same VMI changed: %s", name)
		}
		suffix, ok := strings.CutPrefix(name, "virt-launcher-vm-")
		if !ok || len(suffix) != 5 || strings.Trim(suffix, "bcdfghjklmnpqrstvwxz2456789") != "" {
			t.Fatalf("%q is not virt-launcher-vm- plus 5 characters of utilrand's alphabet", name)
		}
		seen[name] = true
		long := launcherPodName(vmi(strings.Repeat("v", 50+i%200), uid))
		if want := "virt-launcher-" + strings.Repeat("v", 44); !strings.HasPrefix(long, want) || len(long) != 63 {
			t.Fatalf("long VMI name: got %s, want %s plus 5 characters", long, want)
		}
		if errs := validation.IsDNS1123Label(long); len(errs) > 0 {
			t.Fatalf("%q: %v", long, errs)
		}
	}
	if len(seen) < 990 {
		t.Errorf("1000 UIDs gave only %d names", len(seen))
	}
}
