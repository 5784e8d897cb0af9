package main

import (
	"context"
	"time"
)

// measure runs one phase and records what every phase reports: its duration, the CPU each component used
// (virt-api, virt-controller, kube-apiserver, etcd, ..., this process with the node layer, the operator), the
// operator's CPU and the request kinds kube-apiserver spent its time on. A phase that starts a new operator
// process is charged that process's CPU since it started.
func (r *run) measure(ctx context.Context, name string, f func() error) error {
	pid0 := r.operatorPID()
	cpu0, api0, t0 := snapshot(pid0), r.apiMetrics(ctx), time.Now()
	err := f()
	pid1 := r.operatorPID()
	cpu1, api1 := snapshot(pid1), r.apiMetrics(ctx)
	if pid1 != pid0 {
		delete(cpu0, "operator")
	}
	res := r.res
	res.PhaseSeconds[name] = time.Since(t0).Seconds()
	res.ComponentCPUSeconds[name] = cpu1.since(cpu0)
	res.OperatorCPUSeconds[name] = cpu1["operator"] - cpu0["operator"]
	res.APIServerTime[name] = topAPITime(api0, api1, 6)
	return err
}
