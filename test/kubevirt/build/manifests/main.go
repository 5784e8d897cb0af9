// Command kubevirt-manifests writes what virt-operator would create for a KubeVirt install, with KubeVirt's own
// generator code (pkg/virt-operator/resource/generate/install, which calls .../components and .../rbac): the
// CRDs, the RBAC of virt-api, virt-controller and virt-handler, the CA and certificate Secrets and the CA bundle
// ConfigMaps (pkg/virt-operator/resource/apply's steps, run once), the Services, the KubeVirt CR, the APIServices
// v1.subresources.kubevirt.io and v1alpha3.subresources.kubevirt.io, virt-api's webhook configurations and
// virt-handler's ValidatingAdmissionPolicy. The test cluster (test/cluster) applies them and runs virt-api and
// virt-controller as host processes.
//
// It is not part of runpolicy's module (which never imports kubevirt.io/kubevirt): test/kubevirt/build.sh compiles
// it inside the throwaway KubeVirt build module into bin/kubevirt/$KUBEVIRT_VERSION/kubevirt-manifests.
//
//	kubevirt-manifests --out DIR [--namespace kubevirt] [--feature-gates Sidecar,...] [--virt-api-port 8443]
//
// DIR receives, to be applied in this order:
//
//	crds.yaml          the CustomResourceDefinitions (KubeVirt's own included)
//	install.yaml       Namespace, ServiceAccounts, (Cluster)Roles and bindings, Secrets, ConfigMaps, Services, KubeVirt CR
//	handler.yaml       with --handler-image: virt-handler's DaemonSet and the kubevirt-cluster-critical PriorityClass,
//	                   for a real node (test/cluster kubevirtnode.go)
//	registration.yaml  APIServices, webhook configurations, ValidatingAdmissionPolicies and bindings
//	certs/<secret>/tls.crt, tls.key   each certificate Secret's pair, for the components' --*-cert-file flags
//	ca.crt             the CA that signed them (the webhooks' and APIServices' caBundle)
//
// The KubeVirt CR carries the status virt-operator would report once deployed (phase Deployed, the default
// architecture), which virt-api and virt-controller wait for; kube-apiserver keeps status only through the status
// subresource, so whoever applies it writes the status separately.
//
// Deviations from a real install, all for a cluster without pods of KubeVirt's own: the virt-api Service is an
// ExternalName Service (--virt-api-host, default localhost: kube-apiserver's aggregator and webhook clients resolve it
// to <host>:<port>; virt-api's certificate is issued for its Service name, which they send as TLS server name), and
// the APIServices and webhooks use --virt-api-port. Not written: virt-operator's own webhook (no virt-operator
// runs), the Deployments and DaemonSet, OpenShift's SCCs and Routes, monitoring objects, the common instancetypes
// and preferences, and the ContainerPath launcher-pod webhook (feature-gated in virt-operator).
package main

import (
	"bytes"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	extv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	apiregv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	"sigs.k8s.io/yaml"

	v1 "kubevirt.io/api/core/v1"

	"kubevirt.io/kubevirt/pkg/certificates/bootstrap"
	"kubevirt.io/kubevirt/pkg/certificates/triple/cert"
	"kubevirt.io/kubevirt/pkg/virt-operator/resource/apply"
	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/install"
	"kubevirt.io/kubevirt/pkg/virt-operator/util"
)

var scheme = runtime.NewScheme()

func init() {
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, extv1.AddToScheme, apiregv1.AddToScheme, v1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
}

func main() {
	out := flag.String("out", "", "output directory (required)")
	namespace := flag.String("namespace", "kubevirt", "KubeVirt's install namespace")
	gates := flag.String("feature-gates", "", "comma-separated KubeVirt feature gates (spec.configuration.developerConfiguration.featureGates)")
	apiHost := flag.String("virt-api-host", "localhost", "where virt-api listens: the virt-api Service becomes an ExternalName Service for it")
	apiPort := flag.Int("virt-api-port", 443, "virt-api's port, used by the APIServices and the webhooks")
	version := flag.String("kubevirt-version", "", "KubeVirt version reported in the KubeVirt CR's status")
	handlerImage := flag.String("handler-image", "", "virt-handler's image: when set, handler.yaml holds virt-handler's "+
		"DaemonSet (and its PriorityClass) for a real node")
	launcherImage := flag.String("launcher-image", "", "virt-launcher's image, in the DaemonSet (its node-labeller init container)")
	flag.Parse()
	if *handlerImage != "" {
		// virt-operator takes its components' images from its environment (util.GetTargetConfigFromKV).
		_ = os.Setenv(util.VirtHandlerImageEnvName, *handlerImage)
		_ = os.Setenv(util.VirtLauncherImageEnvName, *launcherImage)
	}
	if *out == "" {
		fmt.Fprintln(os.Stderr, "kubevirt-manifests: --out is required")
		os.Exit(2)
	}
	if err := run(*out, *namespace, splitList(*gates), *apiHost, int32(*apiPort), *version, *handlerImage != ""); err != nil {
		fmt.Fprintln(os.Stderr, "kubevirt-manifests:", err)
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func run(out, ns string, gates []string, apiHost string, apiPort int32, version string, handler bool) error {
	kv := kubeVirtCR(ns, gates, version, handler)
	// virt-operator derives its install strategy from the KubeVirt CR and its own environment (image names only
	// matter for the Deployments, which are not written).
	if os.Getenv(util.VirtOperatorImageEnvName) == "" {
		_ = os.Setenv(util.VirtOperatorImageEnvName, "quay.io/kubevirt/virt-operator:"+orLatest(version))
	}
	strategy, err := install.GenerateCurrentInstallStrategy(util.GetTargetConfigFromKV(kv), "", ns)
	if err != nil {
		return fmt.Errorf("generating the install strategy: %w", err)
	}

	var crds docs
	kvCRD, err := components.NewKubeVirtCrd()
	if err != nil {
		return err
	}
	crds.add(kvCRD)
	for _, crd := range strategy.CRDs() {
		crds.add(crd)
	}

	var inst docs
	inst.add(&corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: ns}})
	for _, o := range strategy.ServiceAccounts() {
		inst.add(o)
	}
	for _, o := range strategy.ClusterRoles() {
		inst.add(o)
	}
	for _, o := range strategy.ClusterRoleBindings() {
		inst.add(o)
	}
	for _, o := range strategy.Roles() {
		inst.add(o)
	}
	for _, o := range strategy.RoleBindings() {
		inst.add(o)
	}

	// Certificates as createOrUpdateComponentsWithCertificates makes them: the CA Secrets first (no signer), the CA
	// bundle ConfigMaps from them, then every other certificate Secret signed by kubevirt-ca.
	self := kv.Spec.CertificateRotationStrategy.SelfSigned
	cas := map[string]*tls.Certificate{}
	var certSecrets []*corev1.Secret
	for _, s := range strategy.CertificateSecrets() {
		if s.Name == components.KubeVirtCASecretName || s.Name == components.KubeVirtExportCASecretName ||
			s.Name == components.KubeVirtBackupCASecretName {
			s = s.DeepCopy()
			if err := components.PopulateSecretWithCertificate(s, nil, apply.GetCADuration(self)); err != nil {
				return fmt.Errorf("CA secret %s: %w", s.Name, err)
			}
			if cas[s.Name], err = components.LoadCertificates(s); err != nil {
				return err
			}
			certSecrets = append(certSecrets, s)
		}
	}
	ca := cas[components.KubeVirtCASecretName]
	if ca == nil {
		return fmt.Errorf("the install strategy has no %s secret", components.KubeVirtCASecretName)
	}
	for _, s := range strategy.CertificateSecrets() {
		if cas[s.Name] != nil {
			continue
		}
		s = s.DeepCopy()
		if err := components.PopulateSecretWithCertificate(s, ca, apply.GetCertDuration(self)); err != nil {
			return fmt.Errorf("certificate secret %s: %w", s.Name, err)
		}
		certSecrets = append(certSecrets, s)
	}
	for _, s := range certSecrets {
		inst.add(s)
	}
	caBundle := cert.EncodeCertPEM(ca.Leaf)
	seen := map[string]bool{}
	for _, cm := range strategy.ConfigMaps() {
		if seen[cm.Name] {
			continue // the strategy lists the CA ConfigMaps twice
		}
		seen[cm.Name] = true
		cm = cm.DeepCopy()
		if c := cas[cm.Name]; c != nil {
			cm.Data = map[string]string{components.CABundleKey: string(cert.EncodeCertPEM(c.Leaf))}
		}
		inst.add(cm)
	}
	for _, svc := range strategy.Services() {
		switch svc.Name {
		case components.VirtApiServiceName:
			svc = svc.DeepCopy()
			svc.Spec = corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: apiHost}
		case components.KubevirtOperatorWebhookServiceName:
			continue // no virt-operator runs
		}
		inst.add(svc)
	}
	inst.add(kv)

	var reg docs
	for _, a := range strategy.APIServices() {
		a = a.DeepCopy()
		a.Spec.CABundle = caBundle
		a.Spec.Service.Port = &apiPort
		reg.add(a)
	}
	for _, w := range strategy.MutatingWebhookConfigurations() {
		if w.Name == components.VirtLauncherPodMutatingWebhookName {
			continue // ContainerPath volumes: virt-operator creates it only with that gate
		}
		w = w.DeepCopy()
		for i := range w.Webhooks {
			toVirtAPI(&w.Webhooks[i].ClientConfig, caBundle, apiPort)
		}
		reg.add(w)
	}
	for _, w := range strategy.ValidatingWebhookConfigurations() {
		if w.Name == components.KubeVirtOperatorValidatingWebhookName {
			continue // virt-operator's own webhook: no virt-operator runs
		}
		w = w.DeepCopy()
		for i := range w.Webhooks {
			toVirtAPI(&w.Webhooks[i].ClientConfig, caBundle, apiPort)
		}
		reg.add(w)
	}
	for _, p := range strategy.ValidatingAdmissionPolicies() {
		reg.add(p)
	}
	for _, b := range strategy.ValidatingAdmissionPolicyBindings() {
		reg.add(b)
	}

	files := map[string]*docs{"crds.yaml": &crds, "install.yaml": &inst, "registration.yaml": &reg}
	if handler {
		var h docs
		h.add(components.NewKubeVirtPriorityClassCR())
		for _, ds := range strategy.DaemonSets() {
			h.add(ds)
		}
		files["handler.yaml"] = &h
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for name, d := range files {
		if d.err != nil {
			return d.err
		}
		if err := os.WriteFile(filepath.Join(out, name), d.buf.Bytes(), 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(out, "ca.crt"), caBundle, 0o644); err != nil {
		return err
	}
	for _, s := range certSecrets {
		dir := filepath.Join(out, "certs", s.Name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		for _, key := range []string{bootstrap.CertBytesValue, bootstrap.KeyBytesValue} {
			if err := os.WriteFile(filepath.Join(dir, key), s.Data[key], 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

// kubeVirtCR is the KubeVirt CR a user would create, with the status virt-operator reports once it deployed.
func kubeVirtCR(ns string, gates []string, version string, emulation bool) *v1.KubeVirt {
	kv := &v1.KubeVirt{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1.GroupVersion.String(), Kind: "KubeVirt"},
		ObjectMeta: metav1.ObjectMeta{Name: "kubevirt", Namespace: ns},
		Spec: v1.KubeVirtSpec{
			ImagePullPolicy: corev1.PullIfNotPresent,
			Configuration: v1.KubeVirtConfiguration{
				// A real node here has no /dev/kvm: QEMU's TCG (virt-handler then claims no kvm device).
				DeveloperConfiguration: &v1.DeveloperConfiguration{FeatureGates: gates, UseEmulation: emulation},
			},
		},
	}
	util.SetDefaultArchitecture(kv) // runtime.GOARCH, as virt-operator does
	kv.Status.Phase = v1.KubeVirtPhaseDeployed
	kv.Status.Conditions = []v1.KubeVirtCondition{
		{Type: v1.KubeVirtConditionAvailable, Status: corev1.ConditionTrue, Reason: "AllComponentsReady", Message: "All components are ready."},
		{Type: v1.KubeVirtConditionProgressing, Status: corev1.ConditionFalse, Reason: "AllComponentsReady", Message: "All components are ready."},
		{Type: v1.KubeVirtConditionDegraded, Status: corev1.ConditionFalse, Reason: "AllComponentsReady", Message: "All components are ready."},
	}
	if version != "" {
		kv.Status.ObservedKubeVirtVersion = version
		kv.Status.TargetKubeVirtVersion = version
	}
	return kv
}

func orLatest(v string) string {
	if v == "" {
		return "latest"
	}
	return v
}

// docs is a multi-document YAML stream.
type docs struct {
	buf bytes.Buffer
	err error
}

func (d *docs) add(obj runtime.Object) {
	if d.err != nil {
		return
	}
	// Some generated objects leave their TypeMeta empty or give only the version (virt-operator's typed clients
	// do not need it): set it from the Go type.
	gvks, _, err := scheme.ObjectKinds(obj)
	if err != nil {
		d.err = err
		return
	}
	obj.GetObjectKind().SetGroupVersionKind(gvks[0])
	b, err := yaml.Marshal(obj)
	if err != nil {
		d.err = err
		return
	}
	d.buf.WriteString("---\n")
	d.buf.Write(b)
}

// toVirtAPI points a webhook at virt-api as the test cluster runs it: its CA and its port.
func toVirtAPI(cc *admissionregistrationv1.WebhookClientConfig, caBundle []byte, port int32) {
	cc.CABundle = caBundle
	if s := cc.Service; s != nil {
		s.Port = &port
	}
}
