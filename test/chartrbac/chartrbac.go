// Package chartrbac gives the tests the operator as the Helm chart installs it: the chart (charts/runpolicy) is
// rendered with `helm template` for the test cluster's Kubernetes version, and what makes the operator's identity
// and its limits — its ServiceAccount, ClusterRoles, Role and bindings, its ValidatingAdmissionPolicies — is created
// as rendered; the operator then runs with a token of that ServiceAccount (TokenRequest API), never as the cluster
// admin, and with the rendered Deployment's container args, parsed by the operator's own flag code
// (internal/operatorflags). A verb the chart does not grant fails the test that needs it, as it would fail users.
//
// Test settings that differ from the chart's defaults (a short restart backoff, a test hook sidecar image, one
// replica without leader election for an in-process manager) come in as chart values, so that the args stay the
// chart's. Only where a process on the test host differs from a pod — its listen addresses — are flags added after
// the chart's, and flags the chart has no value for (the bench's --restart-request).
package chartrbac

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"

	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/internal/operatorflags"
	"github.com/runpolicy/runpolicy/test/cluster"
)

// The release the tests render, and its namespace (the operator's ServiceAccount and Lease live there).
const (
	Release   = "runpolicy"
	Namespace = "runpolicy-system"
)

// SingleReplica are the chart values for one replica without leader election: for a manager a test restarts at will
// (a crashed pod) without waiting for a Lease, and for the bench, whose write counts must not include Lease renewals.
var SingleReplica = []string{"replicas=1", "leaderElection.enabled=false"}

// HookSidecarImage returns the chart values that make the operator's --hook-sidecar-image image, repository:tag (an
// image without a tag gets the chart's appVersion, as in the chart).
func HookSidecarImage(image string) []string {
	repo, tag := image, ""
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		repo, tag = image[:i], image[i+1:]
	}
	return []string{"hookSidecar.image.repository=" + repo, "hookSidecar.image.tag=" + tag}
}

// tokenLifetime is how long the operator's token is valid: longer than any test, bench or demo runs.
const tokenLifetime = 48 * time.Hour

// Operator is the operator's identity and command line as the chart installs it.
type Operator struct {
	// Namespace and ServiceAccount name the operator's ServiceAccount; User is its user name in kube-apiserver.
	Namespace, ServiceAccount, User string
	// Config reaches kube-apiserver with the ServiceAccount's token and the server's CA, nothing else.
	Config *rest.Config
	// Kubeconfig is a kubeconfig file with the same, for the operator binary (--kubeconfig).
	Kubeconfig string
	// Args are the Deployment's container args.
	Args []string
	// Env is the environment the Deployment gives the container (NAME=value), its Downward API values resolved.
	Env []string
	// Manifest is what `helm template` rendered (empty when the chart was installed by the test itself).
	Manifest string
}

// Install renders the chart with the --set values set and creates in env's cluster every rendered object but the
// CRDs (the test cluster has them from crds/, which the chart copies) and the Deployment (the test runs the operator
// itself): the release namespace, the ServiceAccount, the RBAC, the admission policies, the Service and the
// PodDisruptionBudget. It returns the operator's identity with a fresh token.
func Install(ctx context.Context, env *cluster.Env, set ...string) (*Operator, error) {
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		return nil, err
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		return nil, err
	}
	manifest, err := Render(strings.TrimPrefix(v.GitVersion, "v"), set...)
	if err != nil {
		return nil, err
	}
	objs, err := decode(manifest)
	if err != nil {
		return nil, err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}
	if err := env.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	deploy, err := deploymentOf(objs)
	if err != nil {
		return nil, err
	}
	for _, obj := range objs {
		switch obj.GroupVersionKind().GroupKind().String() {
		case "CustomResourceDefinition.apiextensions.k8s.io", "Deployment.apps":
			continue
		}
		if err := env.Client.Create(ctx, obj); err != nil {
			return nil, fmt.Errorf("creating the chart's %s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
	}
	op, err := ForDeployment(ctx, env, deploy)
	if err != nil {
		return nil, err
	}
	op.Manifest = manifest
	return op, nil
}

// ForDeployment returns the identity of the operator the chart's Deployment (rendered or installed) runs: a token
// of its ServiceAccount, which must exist, and its controller container's args and environment.
func ForDeployment(ctx context.Context, env *cluster.Env, deploy *appsv1.Deployment) (*Operator, error) {
	containers := deploy.Spec.Template.Spec.Containers
	if len(containers) != 1 {
		return nil, fmt.Errorf("the Deployment %s has %d containers, want the controller alone", deploy.Name, len(containers))
	}
	c := containers[0]
	envVars, err := containerEnv(c)
	if err != nil {
		return nil, err
	}
	sa := deploy.Spec.Template.Spec.ServiceAccountName
	op := &Operator{Namespace: deploy.Namespace, ServiceAccount: sa, User: "system:serviceaccount:" + deploy.Namespace + ":" + sa,
		Args: c.Args, Env: envVars}
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		return nil, err
	}
	tok, err := cs.CoreV1().ServiceAccounts(op.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(tokenLifetime.Seconds()))},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("a token for the ServiceAccount %s/%s: %w", op.Namespace, sa, err)
	}
	op.Config = &rest.Config{
		Host:            env.Config.Host,
		APIPath:         env.Config.APIPath,
		BearerToken:     tok.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: env.Config.CAData, ServerName: env.Config.ServerName},
		// As ctrl.GetConfig leaves it for the binary: no client-side rate limit, kube-apiserver's priority and
		// fairness apply.
		QPS: -1,
	}
	if op.Kubeconfig, err = writeKubeconfig(filepath.Join(env.Dir(), "runpolicy-operator.kubeconfig"), op); err != nil {
		return nil, err
	}
	return op, nil
}

// Flags parses the Deployment's args, then local (flags of the process on the test host: its listen addresses),
// with the operator's own flag code.
func (o *Operator) Flags(local ...string) (*operatorflags.Flags, error) {
	f, err := operatorflags.Parse(append(append([]string{}, o.Args...), local...))
	if err != nil {
		return nil, fmt.Errorf("the chart's Deployment args %q: %w", o.Args, err)
	}
	return f, nil
}

// Manager builds the operator's manager in-process as cmd/controller does from the Deployment's args, under the
// ServiceAccount's identity, serving neither metrics nor probes (the tests read controller-runtime's metrics
// registry); it returns the reconcilers' options from the same args for controllers.Setup. A test may build it
// again in the same process (a restart): controller names may repeat.
func (o *Operator) Manager() (ctrl.Manager, controllers.Options, error) {
	f, err := o.Flags("--metrics-bind-address=0", "--health-probe-bind-address=0", "--pprof-bind-address=0")
	if err != nil {
		return nil, controllers.Options{}, err
	}
	opts, err := f.Options()
	if err != nil {
		return nil, opts, err
	}
	mo := f.ManagerOptions()
	mo.Controller = config.Controller{SkipNameValidation: ptr.To(true)}
	mgr, err := ctrl.NewManager(rest.CopyConfig(o.Config), mo)
	return mgr, opts, err
}

// Render runs `helm template` of the chart as release Release in Namespace for Kubernetes kubeVersion, with the
// --set values set.
func Render(kubeVersion string, set ...string) (string, error) {
	args := make([]string, 0, 7+2*len(set))
	args = append(args, "template", Release, filepath.Join(cluster.RepoRoot(), "charts", "runpolicy"),
		"--namespace", Namespace, "--kube-version", kubeVersion)
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return RunHelm(args...)
}

// Helm returns $HELM (the Makefile sets it), else the pinned helm `make helm` builds into bin/tools/helm.
func Helm() (string, error) {
	if h := os.Getenv("HELM"); h != "" {
		return h, nil
	}
	p := filepath.Join(cluster.RepoRoot(), "bin", "tools", "helm")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("helm not found at %s: run `make helm` (builds the pinned helm from test/tools/go.mod) or set HELM", p)
	}
	return p, nil
}

// RunHelm runs helm with a private cache, config and data home and returns its stdout; a failure is a *HelmError
// with helm's stderr.
func RunHelm(args ...string) (string, error) {
	bin, err := Helm()
	if err != nil {
		return "", err
	}
	home, err := os.MkdirTemp("", "runpolicy-helm-")
	if err != nil {
		return "", err
	}
	defer func() { _ = os.RemoveAll(home) }()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), &HelmError{Args: args, Err: err, Stderr: stderr.String()}
	}
	return stdout.String(), nil
}

// HelmError is a helm run that failed: its arguments, its exit and what it printed on stderr.
type HelmError struct {
	Args   []string
	Err    error
	Stderr string
}

func (e *HelmError) Error() string {
	return "helm " + strings.Join(e.Args, " ") + ": " + e.Err.Error() + ": " + e.Stderr
}

func (e *HelmError) Unwrap() error { return e.Err }

// decode splits a rendered manifest into its objects, in order.
func decode(manifest string) ([]*unstructured.Unstructured, error) {
	dec := k8syaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	var out []*unstructured.Unstructured
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("the rendered chart: %w", err)
		}
		if len(obj.Object) > 0 {
			out = append(out, obj)
		}
	}
}

// deploymentOf returns the one Deployment among the rendered objects.
func deploymentOf(objs []*unstructured.Unstructured) (*appsv1.Deployment, error) {
	var deploy *appsv1.Deployment
	for _, obj := range objs {
		if obj.GroupVersionKind().GroupKind().String() != "Deployment.apps" {
			continue
		}
		if deploy != nil {
			return nil, errors.New("the chart rendered two Deployments")
		}
		deploy = &appsv1.Deployment{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, deploy); err != nil {
			return nil, err
		}
	}
	if deploy == nil {
		return nil, errors.New("the chart rendered no Deployment")
	}
	return deploy, nil
}

// containerEnv resolves the container's environment as the kubelet would: plain values, and the container's own
// resource limits through the Downward API (the chart's RUNPOLICY_MEMORY_LIMIT).
func containerEnv(c corev1.Container) ([]string, error) {
	out := make([]string, 0, len(c.Env))
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			out = append(out, e.Name+"="+e.Value)
		case e.ValueFrom.ResourceFieldRef != nil:
			ref := e.ValueFrom.ResourceFieldRef
			if ref.ContainerName != "" && ref.ContainerName != c.Name {
				return nil, fmt.Errorf("env %s: a resource of container %s", e.Name, ref.ContainerName)
			}
			name, ok := strings.CutPrefix(ref.Resource, "limits.")
			if !ok {
				return nil, fmt.Errorf("env %s: resource %s is not a limit", e.Name, ref.Resource)
			}
			q, ok := c.Resources.Limits[corev1.ResourceName(name)]
			if !ok {
				return nil, fmt.Errorf("env %s: the container has no %s limit", e.Name, name)
			}
			div := int64(1)
			if !ref.Divisor.IsZero() {
				div = ref.Divisor.Value()
			}
			out = append(out, e.Name+"="+strconv.FormatInt((q.Value()+div-1)/div, 10))
		default:
			return nil, fmt.Errorf("env %s: only plain values and resource limits are supported here", e.Name)
		}
	}
	return out, nil
}

func writeKubeconfig(path string, op *Operator) (string, error) {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: op.Config.Host, CertificateAuthorityData: op.Config.CAData,
		TLSServerName: op.Config.ServerName}
	kc.AuthInfos[op.User] = &clientcmdapi.AuthInfo{Token: op.Config.BearerToken}
	kc.Contexts["operator"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: op.User}
	kc.CurrentContext = "operator"
	return path, clientcmd.WriteToFile(*kc, path)
}
