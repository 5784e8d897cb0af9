package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

func ms(s float64) string { return fmt.Sprintf("%.1f", s*1000) }

// table renders the results; the target columns are the budget for one restart, 2× the write floor (p50)
// plus one reconcile (the operator's mean), for the cheapest write (a ConfigMap) and for a write of the operator's
// own kind of object (a runpolicy.io VirtualMachine).
func table(rs []result) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "N\tcreate s\tconverge(create) s\tresync(plain restart) s\tresync writes\tconverge(restart, every spec changed) s\top first write s\t"+
		"resets\treset→VMI p50 ms\tp99 ms\tmax ms\tVMI final→new p50 ms\tp99 ms\twrite floor p50 ms\tp99 ms\tVM write floor p50 ms\tp99 ms\treconcile mean ms\t2×floor+reconcile ms\t2×VM floor+reconcile ms\t"+
		"writes/restart\tstate writes/restart\tevents/restart\top peak RSS MiB\top CPU s create/resync/restart/resets\t")
	for _, r := range rs {
		fmt.Fprintf(w, "%d\t%.1f\t%.1f\t%.1f\t%d\t%.1f\t%.1f\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%.0f\t%.1f/%.1f/%.1f/%.1f\t\n",
			r.N, r.CreateSeconds, r.ConvergeCreate, r.ResyncRestart, r.ResyncWrites, r.ConvergeRestart, r.OperatorReadyAfter,
			r.Resets, ms(r.ResetP50), ms(r.ResetP99), ms(r.ResetMax), ms(r.FinalToNewP50), ms(r.FinalToNewP99),
			ms(r.FloorP50), ms(r.FloorP99), ms(r.VMFloorP50), ms(r.VMFloorP99), ms(r.ReconcileMean), ms(2*r.FloorP50+r.ReconcileMean),
			ms(2*r.VMFloorP50+r.ReconcileMean),
			r.WritesPerRestart, r.StateWritesPerRestart, r.EventsPerRestart, r.OperatorPeakRSSMiB,
			r.OperatorCPUSeconds["create"], r.OperatorCPUSeconds["resync"], r.OperatorCPUSeconds["restart"], r.OperatorCPUSeconds["resets"])
	}
	_ = w.Flush()
	for _, r := range rs {
		fmt.Fprintf(&b, "\nN=%d", r.N)
		if r.Err != "" {
			fmt.Fprintf(&b, " — INCOMPLETE: %s", r.Err)
		}
		fmt.Fprintf(&b, "\n  reset→new VMI split: VMI final→operator's start call p50 %s ms p99 %s ms; start call→new VMI (stand-in) p50 %s ms p99 %s ms",
			ms(r.FinalToStartP50), ms(r.FinalToStartP99), ms(r.StartToNewP50), ms(r.StartToNewP99))
		fmt.Fprintf(&b, "\n  operator's part split: VMI final→intent status write received p50 %s ms p99 %s ms; that write in kube-apiserver p50 %s ms p99 %s ms; its response→start call received p50 %s ms p99 %s ms",
			ms(r.FinalToIntentP50), ms(r.FinalToIntentP99), ms(r.IntentWriteP50), ms(r.IntentWriteP99), ms(r.IntentToStartP50), ms(r.IntentToStartP99))
		if r.ResyncWrites > 0 {
			fmt.Fprintf(&b, "\n  operator writes during the resync after a plain restart (audit log): %s", r.ResyncWritesByKind)
		}
		if r.RestartWrites > 0 {
			fmt.Fprintf(&b, "\n  operator writes until converged after the restart with every spec changed (audit log): %d, %.2f per VM: %s",
				r.RestartWrites, float64(r.RestartWrites)/float64(r.N), r.RestartWritesByKind)
		}
		fmt.Fprintf(&b, "\n  operator writes during the reset stream (audit log): %s (failed: %d %v); resets timed out: %d",
			r.WritesByKind, r.FailedWrites, r.FailedWritesBy, r.ResetsTimedOut)
		fmt.Fprintf(&b, "\n  operator peak RSS per process: created the VMs %.0f MiB, plain restart %.0f MiB, restart with specs changed + resets %.0f MiB\n",
			r.OperatorPeakRSSByRun["create"], r.OperatorPeakRSSByRun["resync"], r.OperatorPeakRSSByRun["restart+resets"])
		for _, ph := range []struct{ key, name string }{{"create", "create"}, {"resync", "resync (plain restart)"},
			{"restart", "restart (every spec changed)"}, {"resets", "resets"}} {
			if s, ok := r.ComponentCPUSeconds[ph.key]; ok {
				fmt.Fprintf(&b, "  CPU during %s: %s\n", ph.name, s)
			}
			if s := r.APIServerTime[ph.key]; s != "" {
				fmt.Fprintf(&b, "    kube-apiserver time during %s (top request kinds): %s\n", ph.name, s)
			}
		}
	}
	return b.String()
}

func writeResults(dir string, rs []result) error {
	stamp := time.Now().Format("20060102-150405")
	if err := os.WriteFile(filepath.Join(dir, "bench-"+stamp+".txt"), []byte(table(rs)+"\n"), 0o644); err != nil {
		return err
	}
	j, err := json.MarshalIndent(rs, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bench-"+stamp+".json"), j, 0o644); err != nil {
		return err
	}
	// Stable names for the latest run.
	_ = os.WriteFile(filepath.Join(dir, "bench.txt"), []byte(table(rs)+"\n"), 0o644)
	_ = os.WriteFile(filepath.Join(dir, "bench.json"), j, 0o644)
	return writePlot(filepath.Join(dir, "latency-vs-n.png"), rs)
}
