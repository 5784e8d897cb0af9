package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// maxOperations is how many of a VM's operations status lists, newest first.
const maxOperations = 5

func newStatusCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "status NAME",
		Short: "Show a VirtualMachine's power state: policy, phase, pending changes, shutdown history, operations",
		Example: "  # How web runs, why its last VMI ended, and its latest operations\n" +
			"  kubectl runpolicy status web",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{msg: "name exactly one VirtualMachine", command: cmd.CommandPath()}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.status(cmd.Context(), args[0])
		},
	}
}

func (o *options) status(ctx context.Context, name string) error {
	c, ns, err := o.connect()
	if err != nil {
		return err
	}
	vm := &v1alpha1.VirtualMachine{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, vm); err != nil {
		return err
	}
	list := &v1alpha1.VirtualMachineOperationList{}
	var ops []v1alpha1.VirtualMachineOperation
	opsErr := c.List(ctx, list, client.InNamespace(ns))
	for _, op := range list.Items {
		if op.Spec.VirtualMachineName == name {
			ops = append(ops, op)
		}
	}
	printStatus(o.streams.Out, vm, ops, opsErr, time.Now())
	return nil
}

// printStatus describes vm, in the manner of kubectl describe: its policy, phase, pending changes and
// conditions, the shutdown history and its newest operations (ops, in any order; opsErr when they could not be
// listed).
func printStatus(out io.Writer, vm *v1alpha1.VirtualMachine, ops []v1alpha1.VirtualMachineOperation, opsErr error, now time.Time) {
	st := vm.Status
	w := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fprintf(w, "Name:\t%s\n", vm.Name)
	fprintf(w, "Namespace:\t%s\n", vm.Namespace)
	policy := vm.Spec.RunPolicy
	if policy == "" {
		policy = v1alpha1.RunPolicyAlwaysOnUntilStoppedManually
	}
	fprintf(w, "Policy:\t%s\n", policy)
	phase := string(st.Phase)
	if phase == "" {
		phase = "<none> (not reported yet: is the runpolicy operator running?)"
	}
	if st.PrintableStatus != "" {
		phase += " (KubeVirt: " + st.PrintableStatus + ")"
	}
	fprintf(w, "Phase:\t%s\n", phase)
	fprintf(w, "Pending changes:\t%s\n", pendingChanges(vm))
	restarts := fmt.Sprintf("%d", st.RestartCount)
	if st.FailureCount > 0 {
		restarts += fmt.Sprintf(" (%d consecutive failures)", st.FailureCount)
	}
	fprintf(w, "Restarts:\t%s\n", restarts)
	if st.RestartNotBefore != nil {
		fprintf(w, "Next restart:\t%s\n", timeAndAge(st.RestartNotBefore, now))
	}
	if st.StartQueuePosition > 0 {
		fprintf(w, "Start queue:\tplace %d (waiting for a start slot; spec.startOrder %d)\n", st.StartQueuePosition, vm.Spec.StartOrder)
	}
	if vm.Generation != 0 && st.ObservedGeneration != vm.Generation {
		fprintf(w, "Status:\tof generation %d; the spec is at generation %d\n", st.ObservedGeneration, vm.Generation)
	}
	_ = w.Flush()

	fprintln(out, "Conditions:")
	if len(st.Conditions) == 0 {
		fprintln(out, "  <none>")
	} else {
		w = tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
		fprintln(w, "  TYPE\tSTATUS\tREASON\tMESSAGE")
		for _, c := range st.Conditions {
			fprintf(w, "  %s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, c.Message)
		}
		_ = w.Flush()
	}

	printShutdownHistory(out, shutdownHistory(vm), now)

	fprintln(out, "Operations (newest first):")
	switch {
	case opsErr != nil:
		fprintf(out, "  <cannot list: %v>\n", opsErr)
	case len(ops) == 0:
		fprintln(out, "  <none>")
	default:
		slices.SortFunc(ops, func(a, b v1alpha1.VirtualMachineOperation) int {
			if c := b.CreationTimestamp.Compare(a.CreationTimestamp.Time); c != 0 {
				return c
			}
			return strings.Compare(b.Name, a.Name)
		})
		w = tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
		fprintln(w, "  NAME\tTYPE\tFORCE\tPHASE\tREASON\tAGE")
		for _, op := range ops[:min(len(ops), maxOperations)] {
			phase, reason := string(op.Status.Phase), ""
			if phase == "" {
				phase = "<none>"
			}
			if c := meta.FindStatusCondition(op.Status.Conditions, v1alpha1.OperationConditionCompleted); c != nil {
				reason = c.Reason
			}
			fprintf(w, "  %s\t%s\t%t\t%s\t%s\t%s\n", op.Name, op.Spec.Type, op.Spec.Force, phase, reason,
				age(op.CreationTimestamp, now))
		}
		_ = w.Flush()
		if n := len(ops) - maxOperations; n > 0 {
			fprintf(out, "  (%d older not shown: kubectl get vmop)\n", n)
		}
	}
}

// pendingChanges reads the AwaitingRestartToApplyConfiguration condition: whether the running VMI waits for a
// restart to pick up a spec change.
func pendingChanges(vm *v1alpha1.VirtualMachine) string {
	c := meta.FindStatusCondition(vm.Status.Conditions, v1alpha1.ConditionAwaitingRestart)
	if c == nil {
		return "<unknown> (not reported yet)"
	}
	switch c.Status {
	case metav1.ConditionTrue:
		return withMessage("yes", c.Message)
	case metav1.ConditionFalse:
		return "none"
	default:
		return withMessage("unknown", c.Message)
	}
}

func withMessage(s, msg string) string {
	if msg == "" {
		return s
	}
	return s + ": " + msg
}

// shutdownHistory returns how the VM's last VMIs ended, newest first: status.shutdownHistory, or
// status.lastShutdown alone as written by an operator from before the history.
func shutdownHistory(vm *v1alpha1.VirtualMachine) []v1alpha1.Shutdown {
	if len(vm.Status.ShutdownHistory) == 0 && vm.Status.LastShutdown != nil {
		return []v1alpha1.Shutdown{*vm.Status.LastShutdown}
	}
	return vm.Status.ShutdownHistory
}

func printShutdownHistory(out io.Writer, records []v1alpha1.Shutdown, now time.Time) {
	fprintln(out, "Shutdown history (newest first):")
	if len(records) == 0 {
		fprintln(out, "  <none>")
		return
	}
	w := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fprintln(w, "  TIME\tSOURCE\tREASON\tACTION\tVMI")
	for _, r := range records {
		fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", timeAndAge(r.Time, now), r.Source, orNone(r.Reason),
			orNone(string(r.Action)), orNone(r.VMIUID))
	}
	_ = w.Flush()
}

func timeAndAge(t *metav1.Time, now time.Time) string {
	if t == nil || t.IsZero() {
		return "<unknown>"
	}
	d := now.Sub(t.Time)
	if d < 0 {
		return t.UTC().Format(time.RFC3339) + " (in " + duration.HumanDuration(-d) + ")"
	}
	return t.UTC().Format(time.RFC3339) + " (" + duration.HumanDuration(d) + " ago)"
}

func age(t metav1.Time, now time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(t.Time))
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}
