package kubevirt_test

import (
	"net/http"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	virtv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/test/kubevirt"
)

// subresourceCase is one row of virt-api's lifecycle.go: a call on a VM with that strategy, running or not,
// answers code (with message for refusals); the VM then settles in want with vmis VMIs created and runStrategy
// wantStrategy.
type subresourceCase struct {
	strategy     virtv1.VirtualMachineRunStrategy
	running      bool
	action       string
	body         any
	code         int
	message      string
	want         state
	vmis         int
	wantStrategy virtv1.VirtualMachineRunStrategy
}

var zero = int64(0)
var five = int64(5)

var subresourceTable = []subresourceCase{
	// Always: start makes no sense; stop flips the strategy to Halted; restart replaces the VMI.
	{virtv1.RunStrategyAlways, true, "start", nil, http.StatusConflict, `Operation cannot be fulfilled on virtualmachine.kubevirt.io "vm": VM is already running`, running, 1, virtv1.RunStrategyAlways},
	{virtv1.RunStrategyAlways, true, "stop", nil, http.StatusAccepted, "", stopped, 1, virtv1.RunStrategyHalted},
	{virtv1.RunStrategyAlways, true, "restart", nil, http.StatusAccepted, "", running, 2, virtv1.RunStrategyAlways},
	{virtv1.RunStrategyAlways, true, "restart", &virtv1.RestartOptions{GracePeriodSeconds: &zero}, http.StatusAccepted, "", running, 2, virtv1.RunStrategyAlways},
	{virtv1.RunStrategyAlways, true, "restart", &virtv1.RestartOptions{GracePeriodSeconds: &five}, http.StatusBadRequest, "For force restart, only gracePeriod=0 is supported for now", running, 1, virtv1.RunStrategyAlways},
	// Halted: start flips the strategy to Always; stop and restart are refused.
	{virtv1.RunStrategyHalted, false, "start", nil, http.StatusAccepted, "", running, 1, virtv1.RunStrategyAlways},
	{virtv1.RunStrategyHalted, false, "stop", nil, http.StatusConflict, "VM is not running", stopped, 0, virtv1.RunStrategyHalted},
	{virtv1.RunStrategyHalted, false, "restart", nil, http.StatusConflict, "RunStategy Halted does not support manual restart requests", stopped, 0, virtv1.RunStrategyHalted},
	// Manual: start/stop/restart through stateChangeRequests; the strategy never changes.
	{virtv1.RunStrategyManual, false, "start", nil, http.StatusAccepted, "", running, 1, virtv1.RunStrategyManual},
	{virtv1.RunStrategyManual, false, "stop", nil, http.StatusConflict, "VM is not running", stopped, 0, virtv1.RunStrategyManual},
	{virtv1.RunStrategyManual, false, "restart", nil, http.StatusConflict, "VM is not running: Halted", stopped, 0, virtv1.RunStrategyManual},
	{virtv1.RunStrategyManual, true, "start", nil, http.StatusConflict, "VM is already running", running, 1, virtv1.RunStrategyManual},
	{virtv1.RunStrategyManual, true, "stop", nil, http.StatusAccepted, "", stopped, 1, virtv1.RunStrategyManual},
	{virtv1.RunStrategyManual, true, "stop", &virtv1.StopOptions{GracePeriod: &zero}, http.StatusAccepted, "", stopped, 1, virtv1.RunStrategyManual},
	{virtv1.RunStrategyManual, true, "restart", nil, http.StatusAccepted, "", running, 2, virtv1.RunStrategyManual},
	{virtv1.RunStrategyManual, true, "restart", &virtv1.RestartOptions{GracePeriodSeconds: &zero}, http.StatusAccepted, "", running, 2, virtv1.RunStrategyManual},
	// RerunOnFailure: stop goes through a stop request and the VM stays down.
	{virtv1.RunStrategyRerunOnFailure, true, "stop", nil, http.StatusAccepted, "", stopped, 1, virtv1.RunStrategyRerunOnFailure},
	{virtv1.RunStrategyRerunOnFailure, true, "restart", nil, http.StatusAccepted, "", running, 2, virtv1.RunStrategyRerunOnFailure},
	{virtv1.RunStrategyRerunOnFailure, true, "start", nil, http.StatusConflict, "VM is already running", running, 1, virtv1.RunStrategyRerunOnFailure},
	// Once: no manual start or restart; stop flips the strategy to Halted.
	{virtv1.RunStrategyOnce, true, "restart", nil, http.StatusConflict, "RunStategy Once does not support manual restart requests", running, 1, virtv1.RunStrategyOnce},
	{virtv1.RunStrategyOnce, true, "stop", nil, http.StatusAccepted, "", stopped, 1, virtv1.RunStrategyHalted},
}

var _ = Describe("subresources through the aggregation layer", func() {
	for _, tc := range subresourceTable {
		name := string(tc.strategy) + map[bool]string{true: " running", false: " stopped"}[tc.running] + ": " + tc.action
		if tc.body != nil {
			name += " with options"
		}
		It(name, func() {
			ns := newNamespace()
			newVM(ns, "vm", tc.strategy)
			if tc.running && tc.strategy == virtv1.RunStrategyManual {
				Expect(put(ns, "vm", "start", nil)).To(Succeed())
			}
			if tc.running {
				settle(ns, "vm", running, 1)
			} else {
				settle(ns, "vm", stopped, 0)
			}
			before := len(kv.CallsFor(ns, "vm"))

			err := put(ns, "vm", tc.action, tc.body)
			if tc.code == http.StatusAccepted {
				Expect(err).NotTo(HaveOccurred())
			} else {
				Expect(err).To(HaveOccurred())
				var se *apierrors.StatusError
				Expect(err).To(BeAssignableToTypeOf(se))
				Expect(apierrors.ReasonForError(err)).NotTo(BeEmpty())
				Expect(int(err.(*apierrors.StatusError).ErrStatus.Code)).To(Equal(tc.code))
				Expect(err.Error()).To(ContainSubstring(tc.message))
			}
			calls := kv.CallsFor(ns, "vm")
			Expect(calls).To(HaveLen(before + 1))
			last := calls[len(calls)-1]
			Expect(last.Action).To(Equal(tc.action))
			Expect(last.Code).To(Equal(tc.code))
			Expect(last.User).NotTo(BeEmpty())

			settle(ns, "vm", tc.want, tc.vmis)
			Expect(*getVM(ns, "vm").Spec.RunStrategy).To(Equal(tc.wantStrategy))
			Expect(getVM(ns, "vm").Status.StateChangeRequests).To(BeEmpty())
		})
	}

	It("records the calling user from kube-apiserver's X-Remote-User header", func() {
		ns := newNamespace()
		newVM(ns, "vm", virtv1.RunStrategyManual)
		cfg := rest.CopyConfig(env.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: "alice@example.com", Groups: []string{"system:masters", "ops"}}
		alice, err := kubevirt.NewSubresourceClient(cfg)
		Expect(err).NotTo(HaveOccurred())
		Expect(kubevirt.PutVMSubresource(ctx, alice, ns, "vm", "start", &virtv1.StartOptions{})).To(Succeed())
		calls := kv.CallsFor(ns, "vm")
		Expect(calls).To(HaveLen(1))
		Expect(calls[0].User).To(Equal("alice@example.com"))
		Expect(calls[0].Groups).To(ContainElements("system:masters", "ops"))
		settle(ns, "vm", running, 1)
	})

	It("is authorized by kube-apiserver's RBAC before reaching virt-api", func() {
		ns := newNamespace()
		newVM(ns, "vm", virtv1.RunStrategyManual)
		cfg := rest.CopyConfig(env.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: "mallory"}
		mallory, err := kubevirt.NewSubresourceClient(cfg)
		Expect(err).NotTo(HaveOccurred())
		err = kubevirt.PutVMSubresource(ctx, mallory, ns, "vm", "start", nil)
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(kv.CallsFor(ns, "vm")).To(BeEmpty())
		settle(ns, "vm", stopped, 0)
	})

	It("answers 404 for a VM that does not exist", func() {
		ns := newNamespace()
		err := put(ns, "nope", "start", nil)
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "%v", err)
	})
})
