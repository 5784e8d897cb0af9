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

// table renders the results: first the reset stream side by side — runpolicy's restart and KubeVirt's own
// (runStrategy Always) with their ratio —, then the scale figures; the target columns are the budget for
// one restart, 2× the write floor (p50) plus one reconcile (the operator's mean), for the cheapest write (a
// ConfigMap) and for a write of the operator's own kind of object (a runpolicy.io VirtualMachine).
func table(rs []result) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	_, _ = fmt.Fprintln(w, "N\tresets rp/kv\treset→new VMI p50 ms rp\tkv\tratio\tp99 ms rp\tkv\tratio\t"+
		"reset→Running p50 ms rp\tkv\tratio\tp99 ms rp\tkv\tratio\tVMI final→new p50 ms rp\tkv\t")
	for _, r := range rs {
		k := r.KubeVirt
		_, _ = fmt.Fprintf(w, "%d\t%d/%d\t%s\t%s\t%.2f\t%s\t%s\t%.2f\t%s\t%s\t%.2f\t%s\t%s\t%.2f\t%s\t%s\t\n",
			r.N, r.Resets, k.Resets,
			ms(r.ResetP50), ms(k.ResetP50), ratio(r.ResetP50, k.ResetP50), ms(r.ResetP99), ms(k.ResetP99), ratio(r.ResetP99, k.ResetP99),
			ms(r.RunningP50), ms(k.RunningP50), ratio(r.RunningP50, k.RunningP50), ms(r.RunningP99), ms(k.RunningP99), ratio(r.RunningP99, k.RunningP99),
			ms(r.FinalToNewP50), ms(k.FinalToNewP50))
	}
	_ = w.Flush()
	b.WriteString("\n")
	w = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	_, _ = fmt.Fprintln(w, "N\tcreate s\tconverge(create) s\tresync(plain restart) s\tresync writes\tconverge(restart, every spec changed) s\top first write s\t"+
		"max reset ms\twrite floor p50 ms\tp99 ms\tVM write floor p50 ms\tp99 ms\treconcile mean ms\t2×floor+reconcile ms\t2×VM floor+reconcile ms\t"+
		"writes/restart\tstate writes/restart\tevents/restart\top peak RSS MiB\top CPU s create/resync/restart/resets\t")
	for _, r := range rs {
		_, _ = fmt.Fprintf(w, "%d\t%.1f\t%.1f\t%.1f\t%d\t%.1f\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%.0f\t%.1f/%.1f/%.1f/%.1f\t\n",
			r.N, r.CreateSeconds, r.ConvergeCreate, r.ResyncRestart, r.ResyncWrites, r.ConvergeRestart, r.OperatorReadyAfter,
			ms(r.ResetMax), ms(r.FloorP50), ms(r.FloorP99), ms(r.VMFloorP50), ms(r.VMFloorP99), ms(r.ReconcileMean), ms(2*r.FloorP50+r.ReconcileMean),
			ms(2*r.VMFloorP50+r.ReconcileMean),
			r.WritesPerRestart, r.StateWritesPerRestart, r.EventsPerRestart, r.OperatorPeakRSSMiB,
			r.OperatorCPUSeconds["create"], r.OperatorCPUSeconds["resync"], r.OperatorCPUSeconds["restart"], r.OperatorCPUSeconds["resets"])
	}
	_ = w.Flush()
	for _, r := range rs {
		fmt.Fprintf(&b, "\nN=%d (restarts: --restart-request=%s)", r.N, r.RestartRequest)
		if r.Err != "" {
			fmt.Fprintf(&b, " — INCOMPLETE: %s", r.Err)
		}
		if r.PlainConvergeCreate > 0 {
			fmt.Fprintf(&b, "\n  creation: %d runpolicy VMs converged in %.1f s; the same VMs as kubevirt.io VMs created directly (what runpolicy applies; "+
				"same run, before the operator started) in %.1f s: runpolicy adds %+.0f %%",
				r.N, r.ConvergeCreate, r.PlainConvergeCreate, 100*(ratio(r.ConvergeCreate, r.PlainConvergeCreate)-1))
		}
		fmt.Fprintf(&b, "\n  KubeVirt's baseline: %d kubevirt.io VMs with runStrategy Always (same template, same sidecar); resets timed out: runpolicy %d, KubeVirt %d",
			r.KubeVirt.VMs, r.ResetsTimedOut, r.KubeVirt.ResetsTimedOut)
		if len(r.NotConvergedAfterResets) > 0 {
			fmt.Fprintf(&b, "\n  NOT CONVERGED two minutes after the reset stream: %s", strings.Join(r.NotConvergedAfterResets, ", "))
		}
		fmt.Fprintf(&b, "\n  runpolicy's reset→new VMI split: VMI final→operator's start call p50 %s ms p99 %s ms; start call→new VMI (virt-api + virt-controller) p50 %s ms p99 %s ms",
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
		fmt.Fprintf(&b, "\n  operator writes during the reset stream (audit log): %s (failed: %d %v)",
			r.WritesByKind, r.FailedWrites, r.FailedWritesBy)
		fmt.Fprintf(&b, "\n  operator peak RSS per process: created the VMs %.0f MiB, plain restart %.0f MiB, restart with specs changed + resets %.0f MiB\n",
			r.OperatorPeakRSSByRun["create"], r.OperatorPeakRSSByRun["resync"], r.OperatorPeakRSSByRun["restart+resets"])
		for _, ph := range []struct{ key, name string }{{"create", "create"}, {"resync", "resync (plain restart)"},
			{"restart", "restart (every spec changed)"}, {"resets", "resets"}} {
			if s, ok := r.ComponentCPUSeconds[ph.key]; ok {
				fmt.Fprintf(&b, "  CPU during %s (%.1fs): %s\n", ph.name, r.PhaseSeconds[ph.key], s)
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
