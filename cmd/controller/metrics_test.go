//go:build !unit

package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/internal/operatorflags"
	"github.com/runpolicy/runpolicy/internal/policy"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/fixture"
)

// The metrics endpoint answers only clients that kube-apiserver authenticates and authorizes for GET /metrics.
func TestMetricsNeedAuthorization(t *testing.T) {
	g := NewWithT(t)
	g.SetDefaultEventuallyTimeout(60 * time.Second)
	env, err := cluster.Start(cluster.Options{})
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { g.Expect(env.Stop()).To(Succeed()) }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	addr := l.Addr().String()
	g.Expect(l.Close()).To(Succeed())
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: controllers.NewScheme(), HealthProbeBindAddress: "0",
		Cache: controllers.CacheOptions(), Metrics: operatorflags.MetricsOptions(addr, true, "")})
	g.Expect(err).NotTo(HaveOccurred())
	// The state gauges and the shutdown counter, as controllers.Setup wires them (the reconcilers stay out: the
	// status below is what they would write).
	g.Expect(controllers.SetupMetrics(mgr)).To(Succeed())
	go func() { _ = mgr.Start(ctx) }()

	get := func(token string) (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		// The certificate is self-signed; what is tested is who gets an answer.
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 10 * time.Second}
		res, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer func() { _ = res.Body.Close() }()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b), nil
	}
	status := func(token string) func() (int, error) {
		return func() (int, error) { code, _, err := get(token); return code, err }
	}
	g.Eventually(status("")).Should(Equal(http.StatusUnauthorized), "no token")
	// A bogus token is no fault of the operator's: 401, as kube-apiserver answers it (controller-runtime's own filter
	// answered 500 and logged an error with a stack trace).
	code, body, err := get("not-a-token")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(code).To(Equal(http.StatusUnauthorized), "a bogus token")
	g.Expect(body).NotTo(ContainSubstring("runpolicy_"))

	cs, err := kubernetes.NewForConfig(env.Config)
	g.Expect(err).NotTo(HaveOccurred())
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "scraper"}}
	_, err = cs.CoreV1().ServiceAccounts("default").Create(ctx, sa, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	tok, err := cs.CoreV1().ServiceAccounts("default").CreateToken(ctx, "scraper", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	token := tok.Status.Token
	g.Eventually(status(token)).Should(Equal(http.StatusForbidden), "authenticated, not authorized")

	// The chart's metrics-reader ClusterRole (charts/runpolicy/templates/rbac/metrics-reader.yaml), bound to it.
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "runpolicy-metrics-reader"},
		Rules: []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}}
	_, err = cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "scraper"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "default", Name: "scraper"}}}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(func(g Gomega) {
		code, body, err := get(token)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(code).To(Equal(http.StatusOK), body)
		g.Expect(body).To(ContainSubstring("runpolicy_hook_sidecar_degraded"), fmt.Sprintf("%.300s", strings.TrimSpace(body)))
	}).Should(Succeed())

	t.Log("the state gauges are computed from the cache at scrape time, and a recorded shutdown is counted")
	vm := fixture.VM("default", "web", v1alpha1.RunPolicyManual)
	g.Expect(env.Client.Create(ctx, vm)).To(Succeed())
	since := metav1.NewTime(time.Unix(1767323045, 0))
	vm.Status = v1alpha1.VirtualMachineStatus{Phase: v1alpha1.VirtualMachineRunning, RestartCount: 2, Conditions: []metav1.Condition{
		{Type: v1alpha1.ConditionAwaitingRestart, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonChangesPending, Message: "m", LastTransitionTime: since},
		{Type: v1alpha1.ConditionRebootsApplyChanges, Status: metav1.ConditionFalse, Reason: policy.ReasonFeatureGateDisabled, Message: "m", LastTransitionTime: since},
	}}
	g.Expect(env.Client.Status().Update(ctx, vm)).To(Succeed())
	scrape := func(g Gomega) string {
		code, body, err := get(token)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(code).To(Equal(http.StatusOK))
		return body
	}
	g.Eventually(func(g Gomega) {
		body := scrape(g)
		for _, line := range []string{
			`runpolicy_vms{phase="Running",policy="Manual"} 1`,
			`runpolicy_vms{phase="Stopped",policy="Manual"} 0`,
			`runpolicy_vms_awaiting_restart{policy="Manual",reason="ChangesPendingRestart"} 1`,
			`runpolicy_vms_reboots_not_applying_changes{policy="Manual",reason="SidecarFeatureGateDisabled"} 1`,
			`runpolicy_vm_awaiting_restart_since_timestamp_seconds{name="web",namespace="default",policy="Manual"} 1.767323045e+09`,
			`runpolicy_vm_status_restarts_total{name="web",namespace="default"} 2`,
			`runpolicy_vmops{phase="InProgress",type="Restart"} 0`,
			`runpolicy_vm_shutdowns_total{policy="Manual",reason="unknown"} 0`,
		} {
			g.Expect(body).To(ContainSubstring("\n" + line + "\n"))
		}
	}).Should(Succeed())
	vm.Status.LastShutdown = &v1alpha1.Shutdown{Source: v1alpha1.ShutdownUnknown, VMIUID: "vmi-1", Time: &since}
	g.Expect(env.Client.Status().Update(ctx, vm)).To(Succeed())
	g.Eventually(scrape).Should(ContainSubstring("\n" + `runpolicy_vm_shutdowns_total{policy="Manual",reason="unknown"} 1` + "\n"))
}
