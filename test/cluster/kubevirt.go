package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

const (
	kubeVirtNamespace = "kubevirt"
	// Files kubevirt-manifests writes (test/kubevirt/build/manifests).
	crdsFile         = "crds.yaml"
	installFile      = "install.yaml"
	registrationFile = "registration.yaml"
	// HookSidecarsAnnotation is KubeVirt's hooks.kubevirt.io/hookSidecars, refused without the Sidecar gate.
	hookSidecarsAnnotation = "hooks.kubevirt.io/hookSidecars"
)

// SubresourceAuditPolicy logs every request to subresources.kubevirt.io (virt-api's start, stop, restart, ...)
// at Metadata level: who, which VM, and the response code (kube-apiserver logs no body of a proxied request). What
// virt-api itself does for a forced stop or restart — patch the VMI's terminationGracePeriodSeconds, delete the
// launcher pod with a grace period of 1 s — is logged with its request (the delete options, the patch).
const SubresourceAuditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  resources: [{group: subresources.kubevirt.io}]
- level: Request
  users: ["` + APIServerServiceAccount + `"]
  verbs: ["delete", "patch"]
  resources: [{group: "", resources: ["pods"]}, {group: kubevirt.io, resources: ["virtualmachineinstances"]}]
- level: None
`

// KubeVirt's service accounts, as its RBAC (pkg/virt-operator/resource/generate/rbac) binds them.
const (
	ControllerServiceAccount = "system:serviceaccount:" + kubeVirtNamespace + ":kubevirt-controller"
	APIServerServiceAccount  = "system:serviceaccount:" + kubeVirtNamespace + ":kubevirt-apiserver"
	HandlerServiceAccount    = "system:serviceaccount:" + kubeVirtNamespace + ":kubevirt-handler"
)

// ServiceAccountGroups are the groups kube-apiserver gives a service account of KubeVirt's namespace.
var ServiceAccountGroups = []string{"system:serviceaccounts", "system:serviceaccounts:" + kubeVirtNamespace}

// KubeVirtVersion is the KubeVirt release whose virt-api and virt-controller the cluster runs: $KUBEVIRT_VERSION, or
// test/kubevirt/build.sh's default.
func KubeVirtVersion() string {
	if v := os.Getenv("KUBEVIRT_VERSION"); v != "" {
		return v
	}
	return defaultKubeVirtVersion
}

// defaultKubeVirtVersion must match KUBEVIRT_VERSION's default in test/kubevirt/build.sh.
const defaultKubeVirtVersion = "v1.8.0"

var (
	kvBinOnce sync.Once
	kvBinDir  string
	kvBinErr  error
)

// KubeVirtBinDir returns the folder holding KubeVirt's virt-api, virt-controller and kubevirt-manifests, built by
// test/kubevirt/build.sh (or found cached) under bin/kubevirt/<version>.
func KubeVirtBinDir() (string, error) {
	kvBinOnce.Do(func() {
		kvBinDir, kvBinErr = runBuild(filepath.Join(RepoRoot(), "test", "kubevirt", "build.sh"), "KUBEVIRT_VERSION="+KubeVirtVersion())
	})
	return kvBinDir, kvBinErr
}

// KubeVirtOptions configure KubeVirt's control plane in the test cluster.
type KubeVirtOptions struct {
	// FeatureGates are the KubeVirt CR's spec.configuration.developerConfiguration.featureGates at start, e.g.
	// "Sidecar" (runpolicy's hook sidecar needs it; without it virt-api refuses templates with hook sidecars).
	// KubeVirt.SetFeatureGates changes them while the cluster runs, as an admin would.
	FeatureGates []string
	// LauncherImage is virt-controller's --launcher-image; default quay.io/kubevirt/virt-launcher:<version>, which
	// nothing pulls: the simulated node layer (test/kubevirt) plays the pod. On the real node (NodeOptions.KubeVirt)
	// it is the launcher image built for it.
	LauncherImage string

	// node are KubeVirt's images for the real node (NodeOptions.KubeVirt), nil without.
	node *KubeVirtNodeImages
}

// KubeVirt is KubeVirt's control plane in the test cluster: virt-api and virt-controller, with everything
// virt-operator would have created (kubevirt-manifests) and the KubeVirt CR reporting Deployed.
type KubeVirt struct {
	// Namespace is KubeVirt's install namespace ("kubevirt").
	Namespace string
	// Version is the KubeVirt release running.
	Version string
	// Virtctl is KubeVirt's virtctl of the node's release, with NodeOptions.KubeVirt ("" without).
	Virtctl string

	opts             KubeVirtOptions
	bin, dir         string
	env              *Env
	apiPort, ctlPort int
}

// handlerFile is virt-handler's DaemonSet, for the real node.
const handlerFile = "handler.yaml"

// startHandler applies virt-handler's DaemonSet once the real node runs.
func (k *KubeVirt) startHandler() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return applyFile(ctx, k.env.Client, filepath.Join(k.dir, handlerFile))
}

// writeManifests runs kubevirt-manifests into dir; with node images, handler.yaml too (virt-handler's DaemonSet).
func writeManifests(bin, dir, ns string, gates []string, apiPort int, node *KubeVirtNodeImages) error {
	args := []string{"--out", dir, "--namespace", ns,
		"--feature-gates", strings.Join(gates, ","), "--virt-api-port", strconv.Itoa(apiPort),
		"--kubevirt-version", KubeVirtVersion()}
	if node != nil {
		args = append(args, "--handler-image", node.Handler, "--launcher-image", node.Launcher)
	}
	cmd := exec.Command(filepath.Join(bin, "kubevirt-manifests"), args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kubevirt-manifests: %w: %s", err, lastLines(out, 20))
	}
	return nil
}

// prepare picks virt-api's and virt-controller's ports and writes the manifests (the CRDs are needed before
// kube-apiserver starts).
func (k *KubeVirt) prepare() error {
	k.Namespace, k.Version = kubeVirtNamespace, KubeVirtVersion()
	k.dir = filepath.Join(k.env.dir, "kubevirt")
	if k.opts.node != nil {
		k.Virtctl = filepath.Join(k.opts.node.bin, "virtctl")
	}
	var err error
	if k.apiPort, err = freePort("127.0.0.1"); err != nil {
		return err
	}
	if k.ctlPort, err = freePort("127.0.0.1"); err != nil {
		return err
	}
	bin := k.bin
	if k.opts.node != nil {
		bin = k.opts.node.bin
	}
	return writeManifests(bin, k.dir, k.Namespace, k.opts.FeatureGates, k.apiPort, k.opts.node)
}

// start applies what virt-operator would create, marks the KubeVirt CR Deployed, runs virt-api and virt-controller
// and waits until kube-apiserver serves subresources.kubevirt.io through virt-api, virt-api's webhooks answer and
// virt-controller leads.
func (k *KubeVirt) start() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := k.env.Client
	if err := applyFile(ctx, c, filepath.Join(k.dir, installFile)); err != nil {
		return err
	}
	apiKC, err := k.env.userKubeconfig("virt-api", envtest.User{Name: APIServerServiceAccount, Groups: ServiceAccountGroups})
	if err != nil {
		return err
	}
	ctlKC, err := k.env.userKubeconfig("virt-controller", envtest.User{Name: ControllerServiceAccount, Groups: ServiceAccountGroups})
	if err != nil {
		return err
	}
	certs := filepath.Join(k.dir, "certs")
	pair := func(secret string) (string, string) {
		return filepath.Join(certs, secret, "tls.crt"), filepath.Join(certs, secret, "tls.key")
	}
	apiCrt, apiKey := pair("kubevirt-virt-api-certs")
	handlerCrt, handlerKey := pair("kubevirt-virt-handler-certs")
	if _, err := k.env.startProcess("virt-api", nil, filepath.Join(k.bin, "virt-api"),
		"--kubeconfig", apiKC, "--listen", "127.0.0.1", "--port", strconv.Itoa(k.apiPort),
		"--tls-cert-file", apiCrt, "--tls-key-file", apiKey,
		"--handler-cert-file", handlerCrt, "--handler-key-file", handlerKey,
	); err != nil {
		return err
	}
	launcher := k.opts.LauncherImage
	if launcher == "" {
		launcher = "quay.io/kubevirt/virt-launcher:" + k.Version
	}
	promCrt, promKey := pair("kubevirt-controller-certs")
	if _, err := k.env.startProcess("virt-controller", nil, filepath.Join(k.bin, "virt-controller"),
		"--kubeconfig", ctlKC, "--listen", "127.0.0.1", "--port", strconv.Itoa(k.ctlPort),
		"--launcher-image", launcher, "--exporter-image", "quay.io/kubevirt/virt-exportserver:"+k.Version,
		"--prom-cert-file", promCrt, "--prom-key-file", promKey,
	); err != nil {
		return err
	}
	if err := applyFile(ctx, c, filepath.Join(k.dir, registrationFile)); err != nil {
		return err
	}
	if err := k.waitReady(ctx); err != nil {
		return fmt.Errorf("%w (logs: %s)", err, strings.Join(k.env.Logs(), ", "))
	}
	return nil
}

func (k *KubeVirt) waitReady(ctx context.Context) error {
	c := k.env.Client
	var last error
	check := func(what string, f func(context.Context) error) error {
		err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			if err := k.exited(); err != nil {
				return false, err
			}
			last = f(ctx)
			return last == nil, nil
		})
		if err != nil {
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, err, last)
		}
		return nil
	}
	for _, gv := range kvv1.SubresourceGroupVersions {
		name := gv.Version + "." + gv.Group
		if err := check("APIService "+name+" Available", func(ctx context.Context) error {
			return apiServiceAvailable(ctx, c, name)
		}); err != nil {
			return err
		}
	}
	if err := check("virt-api's webhooks", func(ctx context.Context) error {
		// A VM with both running and runStrategy is refused by virt-api's VM validator, by nobody else.
		vm := probeVM(k.Namespace)
		vm.Spec.Running = new(bool)
		err := c.Create(ctx, vm, client.DryRunAll)
		if err == nil || !strings.Contains(err.Error(), "mutually exclusive") {
			return fmt.Errorf("the VM validator did not refuse a VM with running and runStrategy: %v", err)
		}
		return nil
	}); err != nil {
		return err
	}
	return check("virt-controller to lead", func(ctx context.Context) error {
		return httpsOK(ctx, fmt.Sprintf("https://127.0.0.1:%d/leader", k.ctlPort))
	})
}

// SetFeatureGates replaces the KubeVirt CR's feature gates, as an admin would, and waits until virt-api acts on
// the Sidecar gate accordingly (virt-api and virt-controller follow the CR through their informers).
func (k *KubeVirt) SetFeatureGates(ctx context.Context, gates []string) error {
	c := k.env.Client
	kv := &kvv1.KubeVirt{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: k.Namespace, Name: "kubevirt"}, kv); err != nil {
		return err
	}
	patch := client.MergeFrom(kv.DeepCopy())
	if kv.Spec.Configuration.DeveloperConfiguration == nil {
		kv.Spec.Configuration.DeveloperConfiguration = &kvv1.DeveloperConfiguration{}
	}
	kv.Spec.Configuration.DeveloperConfiguration.FeatureGates = gates
	if err := c.Patch(ctx, kv, patch); err != nil {
		return err
	}
	want := slices.Contains(gates, "Sidecar")
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		vm := probeVM(k.Namespace)
		vm.Spec.Template.ObjectMeta.Annotations = map[string]string{hookSidecarsAnnotation: `[{"image":"probe"}]`}
		err := c.Create(ctx, vm, client.DryRunAll)
		refused := err != nil && strings.Contains(err.Error(), "sidecar feature gate is not enabled")
		return refused != want, nil
	})
}

// probeVM is a VM for dry-run admission checks.
func probeVM(ns string) *kvv1.VirtualMachine {
	rs := kvv1.RunStrategyHalted
	return &kvv1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "admission-probe"},
		Spec: kvv1.VirtualMachineSpec{RunStrategy: &rs, Template: &kvv1.VirtualMachineInstanceTemplateSpec{
			Spec: kvv1.VirtualMachineInstanceSpec{Domain: kvv1.DomainSpec{}},
		}},
	}
}

// exited reports a KubeVirt process that died.
func (k *KubeVirt) exited() error {
	for _, p := range k.env.procs {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited, see %s: %s", p.name, p.log, tail(p.log))
		default:
		}
	}
	return nil
}

func apiServiceAvailable(ctx context.Context, c client.Client, name string) error {
	obj := &unstructured.Unstructured{}
	obj.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiregistration.k8s.io", Version: "v1", Kind: "APIService"})
	if err := c.Get(ctx, types.NamespacedName{Name: name}, obj); err != nil {
		return err
	}
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, x := range conds {
		if m, _ := x.(map[string]any); m["type"] == "Available" {
			if m["status"] == "True" {
				return nil
			}
			return fmt.Errorf("%v: %v", m["reason"], m["message"])
		}
	}
	return errors.New("no Available condition yet")
}

func httpsOK(ctx context.Context, url string) error {
	// virt-controller's serving certificate is KubeVirt's own; only its answer matters here.
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// applyFile creates every object of a multi-document YAML file, in order; a KubeVirt CR's status is written through
// the status subresource afterwards, as virt-operator would report it.
func applyFile(ctx context.Context, c client.Client, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := k8syaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("%s: %w", path, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		status, hasStatus := obj.Object["status"]
		if err := c.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating %s %s/%s: %w", obj.GetKind(), obj.GetNamespace(), obj.GetName(), err)
		}
		if hasStatus && obj.GetKind() == "KubeVirt" {
			obj.Object["status"] = status
			if err := c.Status().Update(ctx, obj); err != nil {
				return fmt.Errorf("writing the KubeVirt CR's status: %w", err)
			}
		}
	}
}

// freePort returns a TCP port free on ip.
func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	return lastLines(b, 10)
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
