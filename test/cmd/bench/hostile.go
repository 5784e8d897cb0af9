package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/chartrbac"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/fixture"
)

// chartMemoryLimitMiB is the operator container's memory limit in the chart's values.yaml.
const chartMemoryLimitMiB = 256

// hostileTemplates measures the operator's peak RSS while a namespace user stores n runpolicy VMs with templates of
// size bytes (a cloud-init script in an annotation, say), against the chart's memory limit (-hostile-templates).
// Only kube-apiserver runs: what is measured is what the operator's caches keep of what users store. The operator
// runs as the chart installs it (chartOperator), with the memory limit its Deployment gives it. The baseline
// in the same run is the operator's RSS with the same VMs and a one-line template.
func hostileTemplates(ctx context.Context, operator string, n, size int) error {
	env, err := cluster.Start(cluster.Options{})
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	op, err := chartOperator(ctx, env, chartrbac.SingleReplica)
	if err != nil {
		return err
	}
	measure := func(tag string, size int) (float64, error) {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "hostile-"}}
		if err := env.Client.Create(ctx, ns); err != nil {
			return 0, err
		}
		logf, err := os.CreateTemp("", "operator-hostile-*.log")
		if err != nil {
			return 0, err
		}
		defer func() { _ = logf.Close() }()
		cmd := operatorCommand(operator, op, "--metrics-bind-address=0", "--health-probe-bind-address=0")
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		defer func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() }()
		for i := range n {
			vm := fixture.VM(ns.Name, fmt.Sprintf("%s-%03d", tag, i), v1alpha1.RunPolicyAlwaysOff)
			vm.Spec.Template.ObjectMeta.Annotations = map[string]string{"user-data": strings.Repeat("x", size)}
			if err := env.Client.Create(ctx, vm); err != nil {
				return 0, fmt.Errorf("creating VM %d: %w", i, err)
			}
		}
		// Until every KubeVirt VM is applied (each one as large as its runpolicy VM), then a while longer.
		deadline := time.Now().Add(10 * time.Minute)
		for {
			synced, err := countSynced(ctx, env.Client, ns.Name)
			if err != nil {
				return 0, err
			}
			if synced == n {
				break
			}
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("%d of %d VMs synced after 10 min", synced, n)
			}
			time.Sleep(time.Second)
		}
		time.Sleep(10 * time.Second)
		hwm, err := memKiB(cmd.Process.Pid)
		return float64(hwm) / 1024, err
	}
	small, err := measure("small", 16)
	if err != nil {
		return err
	}
	big, err := measure("big", size)
	if err != nil {
		return err
	}
	fmt.Printf("operator peak RSS with %d runpolicy VMs: %.0f MiB with one-line templates (baseline), %.0f MiB with %.1f MB templates; "+
		"chart memory limit %d MiB\n", n, small, big, float64(size)/1e6, chartMemoryLimitMiB)
	if big >= chartMemoryLimitMiB {
		log.Printf("bench: the operator would be OOM-killed under the chart's limit")
	}
	return nil
}
