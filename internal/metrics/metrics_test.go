package metrics

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

// find returns the metric of family name with exactly the given labels, from controller-runtime's registry.
func find(t *testing.T, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	families, err := crmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			return m
		}
	}
	return nil
}

func TestRestartRequested(t *testing.T) {
	RestartRequested("Manual", "guest-reset")
	RestartRequested("Manual", "guest-reset")
	RestartRequested("", "")
	if m := find(t, VMRestartsName, map[string]string{"policy": "Manual", "reason": "guest-reset"}); m.GetCounter().GetValue() != 2 {
		t.Errorf("restarts{Manual,guest-reset} = %v, want 2", m)
	}
	if m := find(t, VMRestartsName, map[string]string{"policy": "unknown", "reason": "unknown"}); m.GetCounter().GetValue() != 1 {
		t.Errorf("restarts{unknown,unknown} = %v, want 1", m)
	}
}

func TestOperationFinished(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	OperationFinished("Stop", "Completed", t0, t0.Add(3*time.Second))
	OperationFinished("Stop", "Completed", t0, t0.Add(-time.Second)) // skew: zero
	m := find(t, VMOPDurationName, map[string]string{"type": "Stop", "result": "Completed"})
	if h := m.GetHistogram(); h.GetSampleCount() != 2 || h.GetSampleSum() != 3 {
		t.Errorf("duration{Stop,Completed} = %v, want 2 samples summing to 3s", m)
	}
}
