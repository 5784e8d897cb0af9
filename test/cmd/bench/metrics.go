package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/kubernetes"
)

// parseMetrics parses the Prometheus text format.
func parseMetrics(r io.Reader) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// value is a counter's, gauge's or untyped sample's value.
func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	default:
		return m.GetUntyped().GetValue()
	}
}

// opMetrics are the operator's figures for its virtualmachine controller.
type opMetrics struct {
	reconcileSum, reconcileCount float64 // controller_runtime_reconcile_time_seconds
	reconciles                   float64 // controller_runtime_reconcile_total, every result
	queueDepth                   float64 // workqueue_depth, every priority
	activeWorkers                float64 // controller_runtime_active_workers
}

// scrape reads the operator's metrics of the virtualmachine controller.
func (r *run) scrape() (opMetrics, error) {
	var m opMetrics
	// Bounded, so that a stuck operator cannot hold a phase past -phase-timeout.
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + r.metrics + "/metrics")
	if err != nil {
		return m, err
	}
	defer func() { _ = resp.Body.Close() }()
	families, err := parseMetrics(resp.Body)
	if err != nil {
		return m, err
	}
	for name, f := range families {
		for _, s := range f.GetMetric() {
			l := labels(s)
			switch {
			case name == "workqueue_depth" && l["name"] == "virtualmachine":
				m.queueDepth += value(s)
			case l["controller"] != "virtualmachine":
			case name == "controller_runtime_reconcile_time_seconds":
				m.reconcileSum, m.reconcileCount = s.GetHistogram().GetSampleSum(), float64(s.GetHistogram().GetSampleCount())
			case name == "controller_runtime_reconcile_total":
				m.reconciles += value(s)
			case name == "controller_runtime_active_workers":
				m.activeWorkers = value(s)
			}
		}
	}
	return m, nil
}

// apiMetrics scrapes kube-apiserver's /metrics with the admin client.
func (r *run) apiMetrics(ctx context.Context) map[string][2]float64 {
	cs, err := kubernetes.NewForConfig(r.env.Config)
	if err != nil {
		return nil
	}
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		log.Printf("bench: scraping kube-apiserver metrics: %v", err)
		return nil
	}
	return apiserverTime(raw)
}

// apiserverTime reads kube-apiserver's apiserver_request_duration_seconds (its sum and count) from its /metrics,
// keyed by "verb resource[/subresource]" (summed over the other labels): where the apiserver spends its time.
// Without the family's TYPE line the parser sees _sum and _count as untyped samples of their own; both are read.
func apiserverTime(raw []byte) map[string][2]float64 {
	out := map[string][2]float64{}
	const name = "apiserver_request_duration_seconds"
	families, err := parseMetrics(strings.NewReader(string(raw)))
	if err != nil {
		log.Printf("bench: parsing kube-apiserver metrics: %v", err)
		return out
	}
	add := func(m *dto.Metric, sum, count float64) {
		l := labels(m)
		if l["verb"] == "WATCH" || l["verb"] == "CONNECT" { // long-running: their duration is not work
			return
		}
		key := l["verb"] + " " + l["resource"]
		if l["subresource"] != "" {
			key += "/" + l["subresource"]
		}
		cur := out[key]
		out[key] = [2]float64{cur[0] + sum, cur[1] + count}
	}
	for _, m := range families[name].GetMetric() {
		add(m, m.GetHistogram().GetSampleSum(), float64(m.GetHistogram().GetSampleCount()))
	}
	for _, m := range families[name+"_sum"].GetMetric() {
		add(m, value(m), 0)
	}
	for _, m := range families[name+"_count"].GetMetric() {
		add(m, 0, value(m))
	}
	return out
}

// topAPITime renders the biggest consumers of apiserver time between two scrapes.
func topAPITime(before, after map[string][2]float64, n int) string {
	type row struct {
		k    string
		s, c float64
	}
	rows := make([]row, 0, len(after))
	for k, v := range after {
		rows = append(rows, row{k, v[0] - before[k][0], v[1] - before[k][1]})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].s > rows[j].s })
	var parts []string
	for i := 0; i < len(rows) && i < n; i++ {
		if rows[i].c == 0 {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.0f req %.1fs", rows[i].k, rows[i].c, rows[i].s))
	}
	return strings.Join(parts, "; ")
}

// pct returns the p-th percentile (nearest rank) of xs; 0 for none.
func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}
