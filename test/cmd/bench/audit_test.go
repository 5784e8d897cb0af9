package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// auditLine renders one audit event as kube-apiserver writes it (only the fields the bench reads).
func auditLine(ua, verb, group, resource, sub, name string, code int, received, done time.Time) string {
	r := strings.NewReplacer("UA", ua, "VERB", verb, "GROUP", group, "RES", resource, "SUB", sub, "NAME", name,
		"CODE", strconv.Itoa(code), "RECV", received.Format(time.RFC3339Nano), "DONE", done.Format(time.RFC3339Nano))
	return r.Replace(`{"kind":"Event","stage":"ResponseComplete","verb":"VERB","userAgent":"UA","objectRef":{"resource":"RES",` +
		`"namespace":"bench","name":"NAME","apiGroup":"GROUP","subresource":"SUB"},"responseStatus":{"code":CODE},` +
		`"requestReceivedTimestamp":"RECV","stageTimestamp":"DONE"}`)
}

func writeAudit(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\nnot json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRestartCallsSplitsTheOperatorsPart(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	op, other := "runpolicy-controller/v0.0.0", "virt-controller/v1.8.0"
	log := writeAudit(t,
		// An earlier status write of vm-1, before the VMI ended: not the intent.
		auditLine(op, "update", "runpolicy.io", "virtualmachines", "status", "vm-1", 200, at(-50), at(-45)),
		// The intent, then the start call.
		auditLine(op, "update", "runpolicy.io", "virtualmachines", "status", "vm-1", 200, at(2), at(9)),
		auditLine(op, "update", "subresources.kubevirt.io", "virtualmachines", "start", "vm-1", 200, at(12), at(20)),
		// Someone else's writes of the same names are not the operator's.
		auditLine(other, "update", "kubevirt.io", "virtualmachines", "status", "vm-1", 200, at(21), at(25)),
		auditLine(other, "update", "subresources.kubevirt.io", "virtualmachines", "start", "vm-2", 200, at(3), at(4)),
		// The bookkeeping after the new VMI: a status write after the start.
		auditLine(op, "update", "runpolicy.io", "virtualmachines", "status", "vm-1", 200, at(150), at(156)),
	)
	calls, err := restartCalls(log, "runpolicy-controller")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := calls["vm-2"]; ok {
		t.Errorf("vm-2 has only another client's call, got %+v", calls["vm-2"])
	}
	c := calls["vm-1"]
	if c == nil || len(c.Starts) != 1 || len(c.StatusWrites) != 3 {
		t.Fatalf("vm-1 calls = %+v, want 1 start and 3 status writes", c)
	}
	start, ok := c.startAfter(at(0), at(140))
	if !ok || !start.Received.Equal(at(12)) {
		t.Fatalf("startAfter = %v, %v; want the call received at +12ms", start, ok)
	}
	if _, ok := c.startAfter(at(13), at(140)); ok {
		t.Error("startAfter found a start call received before the window")
	}
	intent, ok := c.intentBefore(at(0), start.Received)
	if !ok || !intent.Received.Equal(at(2)) || !intent.Done.Equal(at(9)) {
		t.Fatalf("intentBefore = %v, %v; want the write received at +2ms, done at +9ms", intent, ok)
	}
	if _, ok := c.intentBefore(at(3), start.Received); ok {
		t.Error("intentBefore found a status write received before the VMI ended")
	}
}

func TestCountWritesByClientAndWindow(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	op := "runpolicy-controller/v0.0.0"
	log := writeAudit(t,
		auditLine(op, "update", "runpolicy.io", "virtualmachines", "status", "vm-1", 200, t0, t0),
		auditLine(op, "update", "runpolicy.io", "virtualmachines", "status", "vm-1", 409, t0.Add(time.Millisecond), t0),
		auditLine(op, "create", "events.k8s.io", "events", "", "vm-1.1", 201, t0.Add(2*time.Millisecond), t0),
		auditLine(op, "update", "subresources.kubevirt.io", "virtualmachines", "start", "vm-1", 200, t0.Add(3*time.Millisecond), t0),
		auditLine("virt-controller/v1.8.0", "update", "kubevirt.io", "virtualmachines", "status", "vm-1", 200, t0, t0),
		// Outside the window.
		auditLine(op, "update", "runpolicy.io", "virtualmachines", "status", "vm-1", 200, t0.Add(time.Second), t0),
	)
	wc, err := countWrites(log, "runpolicy-controller", t0, t0.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if wc.Total != 4 || wc.Events != 1 || wc.Failed != 1 {
		t.Errorf("total %d events %d failed %d; want 4, 1, 1", wc.Total, wc.Events, wc.Failed)
	}
	if got := wc.By["update virtualmachines.runpolicy.io/status"]; got != 2 {
		t.Errorf("status writes = %d, want 2 (%s)", got, wc)
	}
	if got := wc.FailedBy["update virtualmachines.runpolicy.io/status 409"]; got != 1 {
		t.Errorf("failed status writes = %d, want 1 (%v)", got, wc.FailedBy)
	}
}

func TestAPIServerTimeSumsPerRequestKind(t *testing.T) {
	raw := []byte(`apiserver_request_duration_seconds_sum{component="apiserver",dry_run="",group="runpolicy.io",resource="virtualmachines",scope="resource",subresource="status",verb="PUT",version="v1alpha1"} 1.5
apiserver_request_duration_seconds_count{component="apiserver",dry_run="",group="runpolicy.io",resource="virtualmachines",scope="resource",subresource="status",verb="PUT",version="v1alpha1"} 10
apiserver_request_duration_seconds_sum{component="apiserver",dry_run="",group="kubevirt.io",resource="virtualmachines",scope="resource",subresource="status",verb="PUT",version="v1"} 0.5
apiserver_request_duration_seconds_count{component="apiserver",dry_run="",group="kubevirt.io",resource="virtualmachines",scope="resource",subresource="status",verb="PUT",version="v1"} 5
apiserver_request_duration_seconds_sum{component="apiserver",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 900
apiserver_request_duration_seconds_bucket{component="apiserver",le="0.1",resource="pods",verb="GET"} 3
`)
	got := apiserverTime(raw)
	if v := got["PUT virtualmachines/status"]; v != [2]float64{2, 15} {
		t.Errorf("PUT virtualmachines/status = %v, want [2 15] (both groups summed)", v)
	}
	if _, ok := got["WATCH pods"]; ok {
		t.Error("long-running WATCH requests were counted as work")
	}
	if len(got) != 1 {
		t.Errorf("got %d request kinds, want 1: %v", len(got), got)
	}
}

func TestAPIServerTimeReadsTheHistogramAsKubeAPIServerServesIt(t *testing.T) {
	raw := []byte(`# HELP apiserver_request_duration_seconds [STABLE] Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.
# TYPE apiserver_request_duration_seconds histogram
apiserver_request_duration_seconds_bucket{component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="status",verb="PUT",version="v1",le="0.005"} 2
apiserver_request_duration_seconds_bucket{component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="status",verb="PUT",version="v1",le="+Inf"} 4
apiserver_request_duration_seconds_sum{component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="status",verb="PUT",version="v1"} 0.25
apiserver_request_duration_seconds_count{component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="status",verb="PUT",version="v1"} 4
apiserver_request_duration_seconds_bucket{component="apiserver",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1",le="+Inf"} 1
apiserver_request_duration_seconds_sum{component="apiserver",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 600
apiserver_request_duration_seconds_count{component="apiserver",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 1
`)
	got := apiserverTime(raw)
	if v := got["PUT pods/status"]; v != [2]float64{0.25, 4} {
		t.Errorf("PUT pods/status = %v, want [0.25 4]", v)
	}
	if len(got) != 1 {
		t.Errorf("got %d request kinds, want 1 (WATCH is long-running): %v", len(got), got)
	}
}

func TestScrapeReadsTheOperatorsControllerMetrics(t *testing.T) {
	raw := `# TYPE controller_runtime_reconcile_total counter
controller_runtime_reconcile_total{controller="virtualmachine",result="success"} 7
controller_runtime_reconcile_total{controller="virtualmachine",result="error"} 1
controller_runtime_reconcile_total{controller="virtualmachineoperation",result="success"} 50
# TYPE controller_runtime_reconcile_time_seconds histogram
controller_runtime_reconcile_time_seconds_bucket{controller="virtualmachine",le="+Inf"} 8
controller_runtime_reconcile_time_seconds_sum{controller="virtualmachine"} 0.4
controller_runtime_reconcile_time_seconds_count{controller="virtualmachine"} 8
# TYPE workqueue_depth gauge
workqueue_depth{controller="virtualmachine",name="virtualmachine",priority=""} 2
workqueue_depth{controller="virtualmachine",name="virtualmachine",priority="10"} 1
# TYPE controller_runtime_active_workers gauge
controller_runtime_active_workers{controller="virtualmachine"} 3
`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(raw)) }))
	defer srv.Close()
	r := &run{metrics: strings.TrimPrefix(srv.URL, "http://")}
	m, err := r.scrape()
	if err != nil {
		t.Fatal(err)
	}
	want := opMetrics{reconcileSum: 0.4, reconcileCount: 8, reconciles: 8, queueDepth: 3, activeWorkers: 3}
	if m != want {
		t.Errorf("scrape = %+v, want %+v", m, want)
	}
}
