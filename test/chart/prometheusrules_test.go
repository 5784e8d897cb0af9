package chart

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/runpolicy/runpolicy/test/cluster"
)

// promtoolBin is $PROMTOOL, else the pinned promtool that `make promtool` builds into bin/tools/promtool.
func promtoolBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PROMTOOL"); p != "" {
		return p
	}
	p := filepath.Join(cluster.RepoRoot(), "bin", "tools", "promtool")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("promtool not found at %s: run `make promtool` (builds the pinned promtool from test/tools/prom/go.mod) or set PROMTOOL", p)
	}
	return p
}

func promtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(promtoolBin(t), args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out.String())
}

// ruleGroups is the spec of the chart's PrometheusRule, rendered with set: a Prometheus rule file's content.
func ruleGroups(t *testing.T, set ...string) (file []byte, alerts []string) {
	t.Helper()
	for _, d := range split(render(t, append([]string{"prometheusRules.enabled=true"}, set...)...)) {
		if d.source != release+"/templates/prometheusrule.yaml" {
			continue
		}
		var obj struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Spec       struct {
				Groups []struct {
					Name  string           `json:"name"`
					Rules []map[string]any `json:"rules"`
				} `json:"groups"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(d.text), &obj); err != nil {
			t.Fatal(err)
		}
		if obj.APIVersion != "monitoring.coreos.com/v1" || obj.Kind != "PrometheusRule" {
			t.Fatalf("templates/prometheusrule.yaml renders %s %s", obj.APIVersion, obj.Kind)
		}
		for _, g := range obj.Spec.Groups {
			for _, r := range g.Rules {
				if a, ok := r["alert"].(string); ok {
					alerts = append(alerts, a)
				}
			}
		}
		out, err := yaml.Marshal(map[string]any{"groups": obj.Spec.Groups})
		if err != nil {
			t.Fatal(err)
		}
		return out, alerts
	}
	t.Fatal("prometheusRules.enabled=true renders no templates/prometheusrule.yaml")
	return nil, nil
}

// TestPrometheusRules runs Prometheus' own rule checker and rule unit tester (promtool, pinned in
// test/tools/prom/go.mod) on the chart's alerts as rendered: testdata/prometheusrules/*.yaml feed them series and
// say which alerts fire, with which labels and annotations, and which do not. Each case renders the chart with its
// values, so the thresholds the tests assume are the chart's.
func TestPrometheusRules(t *testing.T) {
	cases := []struct {
		name string
		set  []string
	}{
		{"defaults", nil},
		{"custom", []string{
			"prometheusRules.restartLoop.restarts=2", "prometheusRules.restartLoop.window=10m",
			"prometheusRules.changePending.threshold=1h30m", "prometheusRules.changePending.severity=warning",
			"prometheusRules.operationStuck.threshold=1d", "prometheusRules.unknownShutdowns.window=15m",
			"prometheusRules.degraded.for=5m", "prometheusRules.alertLabels.team=vms",
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rules, alerts := ruleGroups(t, c.set...)
			test, err := os.ReadFile(filepath.Join("testdata", "prometheusrules", c.name+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			checkCoverage(t, test, alerts)
			dir := t.TempDir()
			// The unit test file names its rule file, rules.yaml, relative to itself.
			for name, content := range map[string][]byte{"rules.yaml": rules, "test.yaml": test} {
				if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			promtool(t, dir, "check", "rules", "--lint=all", "--lint-fatal", "rules.yaml")
			promtool(t, dir, "test", "rules", "test.yaml")
		})
	}
}

// checkCoverage fails unless the unit test file has, for every alert of the chart, a case where it fires and one
// where it does not, and names no alert the chart lacks.
func checkCoverage(t *testing.T, test []byte, alerts []string) {
	t.Helper()
	var file struct {
		RuleFiles []string `json:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(test, &file); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(file.RuleFiles, []string{"rules.yaml"}) {
		t.Errorf("rule_files = %v, want [rules.yaml] (the rendered chart)", file.RuleFiles)
	}
	firing, silent := map[string]bool{}, map[string]bool{}
	for _, tg := range file.Tests {
		for _, a := range tg.AlertRuleTest {
			if !slices.Contains(alerts, a.Alertname) {
				t.Errorf("the test names alert %s, which the chart does not have (%v)", a.Alertname, alerts)
			}
			if len(a.ExpAlerts) > 0 {
				firing[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	if len(alerts) == 0 {
		t.Fatal("the chart's PrometheusRule has no alerts")
	}
	for _, a := range alerts {
		if !firing[a] || !silent[a] {
			t.Errorf("alert %s: needs a case where it fires (%v) and one where it does not (%v)", a, firing[a], silent[a])
		}
	}
}
