// Package chart tests the Helm chart in charts/runpolicy: lint, a golden render, values.schema.json refusals, and
// (install_test.go) an install into the offline test cluster with the operator then run under the chart's
// ServiceAccount, to prove its RBAC is enough and no more.
package chart

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/runpolicy/runpolicy/test/chartrbac"
	"github.com/runpolicy/runpolicy/test/cluster"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the current chart")

const (
	release   = "runpolicy"
	namespace = "runpolicy-system"
	// kubeVersion is the cluster version offline renders assume, whatever helm's build defaults to.
	kubeVersion = "1.37.2"
)

func chartDir() string { return filepath.Join(cluster.RepoRoot(), "charts", "runpolicy") }

// helm runs the pinned helm ($HELM, else bin/tools/helm) with a private home (chartrbac.RunHelm).
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return chartrbac.RunHelm(args...)
}

func mustHelm(t *testing.T, args ...string) string {
	t.Helper()
	out, err := helm(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func render(t *testing.T, set ...string) string {
	t.Helper()
	args := make([]string, 0, 7+2*len(set))
	args = append(args, "template", release, chartDir(), "--namespace", namespace, "--kube-version", kubeVersion)
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return mustHelm(t, args...)
}

// document is one object of a rendered manifest.
type document struct {
	source string // the template it came from, e.g. runpolicy/templates/deployment.yaml
	text   string
}

func split(manifest string) []document {
	var docs []document
	for _, d := range strings.Split(manifest, "\n---\n") {
		d = strings.TrimPrefix(strings.TrimSpace(d), "---\n")
		if d == "" {
			continue
		}
		src := ""
		if first, _, _ := strings.Cut(d, "\n"); strings.HasPrefix(first, "# Source: ") {
			src = strings.TrimPrefix(first, "# Source: ")
		}
		docs = append(docs, document{source: src, text: d})
	}
	return docs
}

func isCRD(d document) bool { return strings.HasPrefix(d.source, release+"/templates/crds/") }

func TestLint(t *testing.T) {
	t.Log(mustHelm(t, "lint", "--strict", "--kube-version", kubeVersion, chartDir()))
	t.Log(mustHelm(t, "lint", "--strict", "--kube-version", kubeVersion, chartDir(),
		"--set", "metrics.serviceMonitor.enabled=true,hookSidecar.enabled=false,prometheusRules.enabled=true"))
}

// TestTemplateGolden compares the rendered chart, CRDs left out (TestCRDsMatchGenerated covers them), with
// testdata/. Run `go test ./test/chart -run TestTemplateGolden -update` after a deliberate change and review the diff.
func TestTemplateGolden(t *testing.T) {
	cases := map[string][]string{
		"default": nil,
		"options": {
			"replicas=1", "leaderElection.enabled=false", "crds.keep=false", "hookSidecar.enabled=false",
			"image.digest=sha256:" + strings.Repeat("ab", 32), "serviceAccount.create=false", "serviceAccount.name=ops",
			"rbac.aggregateToDefaultRoles=false", "metrics.serviceMonitor.enabled=true",
			"metrics.serviceMonitor.labels.release=prometheus", "vmop.ttl=-1s", "vmop.maxPerVM=-1",
			"restartBackoff.base=1s", "maxConcurrentStarts=20", "logging.level=debug", "nodeSelector.role=infra",
			"prometheusRules.enabled=true", "prometheusRules.labels.release=prometheus",
			"prometheusRules.alertLabels.team=vms", "prometheusRules.changePending.threshold=1h30m",
		},
	}
	for name, set := range cases {
		t.Run(name, func(t *testing.T) {
			var b strings.Builder
			for _, d := range split(render(t, set...)) {
				if !isCRD(d) {
					b.WriteString("---\n" + d.text + "\n")
				}
			}
			golden := filepath.Join("testdata", name+".yaml")
			if *update {
				if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got := b.String(); got != string(want) {
				t.Errorf("rendered chart differs from %s; rerun with -update and review the diff.\n%s", golden, lineDiff(string(want), got))
			}
		})
	}
}

// lineDiff shows the first differing lines, enough to see what changed.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return "line " + strconv.Itoa(i+1) + ":\n- " + wl + "\n+ " + gl
		}
	}
	return ""
}

// TestCRDsMatchGenerated checks that the chart's CRD templates are crds/ plus labels and the keep policy, and that
// crds.enabled=false and crds.keep=false do what they say.
func TestCRDsMatchGenerated(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(cluster.RepoRoot(), "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs in crds/: %v", err)
	}
	rendered := map[string]map[string]any{}
	for _, d := range split(render(t)) {
		if isCRD(d) {
			var obj map[string]any
			if err := yaml.Unmarshal([]byte(d.text), &obj); err != nil {
				t.Fatal(err)
			}
			rendered[filepath.Base(d.source)] = obj
		}
	}
	if len(rendered) != len(files) {
		t.Fatalf("chart renders %d CRDs, crds/ has %d: run `make manifests`", len(rendered), len(files))
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var want map[string]any
		if err := yaml.Unmarshal(raw, &want); err != nil {
			t.Fatal(err)
		}
		got := rendered[filepath.Base(f)]
		if got == nil {
			t.Fatalf("%s is not in the chart: run `make manifests`", filepath.Base(f))
		}
		if !reflect.DeepEqual(got["spec"], want["spec"]) {
			t.Errorf("%s: the chart's spec differs from crds/: run `make manifests`", filepath.Base(f))
		}
		meta := got["metadata"].(map[string]any)
		if a, _ := meta["annotations"].(map[string]any); a["helm.sh/resource-policy"] != "keep" {
			t.Errorf("%s: no helm.sh/resource-policy: keep by default: %v", filepath.Base(f), a)
		}
		if l, _ := meta["labels"].(map[string]any); l["app.kubernetes.io/managed-by"] != "Helm" {
			t.Errorf("%s: chart labels missing: %v", filepath.Base(f), l)
		}
	}
	for _, d := range split(render(t, "crds.enabled=false")) {
		if isCRD(d) {
			t.Errorf("crds.enabled=false still renders %s", d.source)
		}
	}
	for _, d := range split(render(t, "crds.keep=false")) {
		if isCRD(d) && strings.Contains(d.text, "helm.sh/resource-policy") {
			t.Errorf("crds.keep=false still renders the keep policy in %s", d.source)
		}
	}
}

// TestClusterRoleMatchesMarkers checks that the chart's ClusterRole carries exactly the rules controller-gen
// generated from the +kubebuilder:rbac markers (charts/runpolicy/rbac/role.yaml).
func TestClusterRoleMatchesMarkers(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir(), "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := yaml.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	for _, d := range split(render(t)) {
		if d.source != release+"/templates/rbac/clusterrole.yaml" {
			continue
		}
		var got map[string]any
		if err := yaml.Unmarshal([]byte(d.text), &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got["rules"], want["rules"]) {
			t.Errorf("templates/rbac/clusterrole.yaml rules differ from rbac/role.yaml: run `make manifests`")
		}
		return
	}
	t.Fatal("the chart renders no templates/rbac/clusterrole.yaml")
}

// TestBadValuesFail checks that wrong values fail the render (and so `helm install`) with a message naming them.
func TestBadValuesFail(t *testing.T) {
	cases := []struct {
		set  string
		want string // a part of helm's message
	}{
		{"replicas=0", "replicas"},
		{"replicas=two", "replicas"},
		{"vmop.ttl=1day", "ttl"},
		{"vmop.maxPerVM=-2", "maxPerVM"},
		{"restartBackoff.base=10", "base"},
		{"logging.encoder=xml", "encoder"},
		{"image.digest=latest", "digest"},
		{"image.pullPolicy=Sometimes", "pullPolicy"},
		{"replicaCount=3", "replicaCount"}, // a typo: unknown keys are refused
		{"hookSidecar.image.repository=", "repository"},
		{"hookSidecar.enabled=sometimes", "/hookSidecar/enabled"},
		{"kubevirtGuard.enabled=yes", "/kubevirtGuard/enabled"},
		{"leaderElection.enabled=false", "leaderElection.enabled"}, // two replicas, no leader
		{"serviceAccount.create=false", "serviceAccount.name"},
		{"metrics.serviceMonitor.enabled=true,metrics.service.enabled=false", "metrics.service.enabled"},
		{"prometheusRules.enabled=yes", "/prometheusRules/enabled"},
		{"prometheusRules.changePending.threshold=1.5h", "threshold"}, // a Go duration, not Prometheus'
		{"prometheusRules.restartLoop.window=30", "window"},
		{"prometheusRules.restartLoop.restarts=0", "restarts"},
		{"prometheusRules.degraded.severity=", "severity"},
		{"prometheusRules.thresholds.x=1", "thresholds"}, // unknown key
	}
	for _, c := range cases {
		t.Run(c.set, func(t *testing.T) {
			_, err := helm(t, "template", release, chartDir(), "--namespace", namespace, "--kube-version", kubeVersion, "--set", c.set)
			if err == nil {
				t.Fatalf("--set %s rendered; want an error naming %q", c.set, c.want)
			}
			if msg := err.(*chartrbac.HelmError).Stderr; !strings.Contains(msg, c.want) {
				t.Errorf("--set %s: message does not name %q:\n%s", c.set, c.want, msg)
			}
		})
	}
}
