//go:build !unit

package vm_test

import (
	"fmt"
	"strconv"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/internal/metrics"
)

func tooLargeWrites() float64 {
	families, err := crmetrics.Registry.Gather()
	Expect(err).NotTo(HaveOccurred())
	for _, f := range families {
		if f.GetName() != metrics.StatusWriteName {
			continue
		}
		for _, m := range f.GetMetric() {
			if labelValue(m, "reason") == "TooLarge" {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// A VM at etcd's size limit (a template with a huge cloud-init script) cannot have its status stored: runpolicy says
// so where a user looks — an Event and a metric — and does not retry at full rate.
var _ = Describe("A VirtualMachine at etcd's size limit", func() {
	It("is reported by an Event and a metric, and not retried in a loop", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		limit, _ := strconv.Atoi(etcdLimit)
		var obj *v1alpha1.VirtualMachine
		// The largest VM etcd still takes: its status (conditions, a few hundred bytes at least) then cannot be added.
		for size := limit; size > limit-16384; size -= 128 {
			obj = newVM(ns, "huge", v1alpha1.RunPolicyAlwaysOff)
			obj.Spec.Template.ObjectMeta.Annotations = map[string]string{"user-data": strings.Repeat("x", size)}
			if err := k8s.Create(ctx, obj); err == nil {
				GinkgoWriter.Printf("created with a %d-byte annotation\n", size)
				break
			} else {
				Expect(err.Error()).To(ContainSubstring("too large"), fmt.Sprintf("size %d", size))
			}
		}
		Expect(obj.UID).NotTo(BeEmpty(), "no VM size fitted etcd's limit")
		before := tooLargeWrites()
		Eventually(func(g Gomega) []string { return eventReasons(ctx, g, ns, "huge") }).
			Should(ContainElement(vm.EventStatusWriteFailed))
		Eventually(tooLargeWrites).Should(BeNumerically(">", before))
		at := tooLargeWrites()
		Consistently(tooLargeWrites, "3s").Should(BeNumerically("<=", at+1), "a doomed status write retried in a loop")
	})
})
