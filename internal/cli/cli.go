// Package cli is kubectl-runpolicy, the kubectl plugin of runpolicy: `kubectl runpolicy start|stop|restart`
// create VirtualMachineOperations and can wait for them, `kubectl runpolicy status` describes a VirtualMachine's
// power state. It uses the user's kubeconfig and kubectl's connection flags (k8s.io/cli-runtime), so it reaches
// the cluster exactly as kubectl does. cmd/kubectl-runpolicy is its binary; tests drive Run with buffers.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// FieldManager is the field manager of the objects the plugin creates.
const FieldManager = "kubectl-runpolicy"

// LabelCreatedBy is on every operation the plugin creates, with the value FieldManager ("kubectl-runpolicy"); the
// operator labels the operations it creates itself "runpolicy-controller".
const LabelCreatedBy = "app.kubernetes.io/created-by"

// Run runs the plugin with args (without the program name) and returns its exit status: 0 on success, 1 when
// anything failed (a refused request, an unknown VM, an operation that ended Failed, a timeout). Errors are
// written to streams.ErrOut in kubectl's form ("error: ...").
func Run(ctx context.Context, streams genericiooptions.IOStreams, args []string) int {
	cmd := NewCommand(streams)
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		if !errors.As(err, new(reportedError)) {
			printError(streams.ErrOut, err)
		}
		return 1
	}
	return 0
}

// NewCommand returns the root command, `kubectl runpolicy`.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	o := &options{
		streams: streams,
		flags:   genericclioptions.NewConfigFlags(true).WithWarningPrinter(streams),
	}
	cmd := &cobra.Command{
		Use:   "kubectl-runpolicy",
		Short: "Start, stop, restart, migrate, evict and inspect runpolicy VirtualMachines",
		Long: "Start, stop, restart, migrate and evict runpolicy.io VirtualMachines through VirtualMachineOperations, and show a " +
			"VirtualMachine's power state.",
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl runpolicy"},
		SilenceUsage:  true,
		SilenceErrors: true,
		// No completion command: kubectl completes plugins through kubectl_complete-runpolicy, not this one.
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	cmd.SetIn(streams.In)
	cmd.SetOut(streams.Out)
	cmd.SetErr(streams.ErrOut)
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{msg: err.Error(), command: c.CommandPath()}
	})
	o.flags.AddFlags(cmd.PersistentFlags())
	for _, t := range []v1alpha1.VirtualMachineOperationType{v1alpha1.OperationStart, v1alpha1.OperationStop, v1alpha1.OperationRestart,
		v1alpha1.OperationMigrate, v1alpha1.OperationEvict} {
		cmd.AddCommand(newOperationCommand(o, t))
	}
	cmd.AddCommand(newStatusCommand(o))
	return cmd
}

// options is what every subcommand shares: the streams and kubectl's connection flags.
type options struct {
	streams genericiooptions.IOStreams
	flags   *genericclioptions.ConfigFlags
}

// connect returns a client for the cluster and the namespace the flags and kubeconfig name.
func (o *options) connect() (client.WithWatch, string, error) {
	ns, _, err := o.flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, "", err
	}
	cfg, err := o.flags.ToRESTConfig()
	if err != nil {
		return nil, "", err
	}
	scheme := k8sruntime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, "", err
	}
	// kubectl's REST mapper: discovery cached under --cache-dir, read again when a kind is missing from it.
	mapper, err := o.flags.ToRESTMapper()
	if err != nil {
		return nil, "", err
	}
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme, Mapper: mapper})
	if err != nil {
		return nil, "", err
	}
	return c, ns, nil
}

// usageError is a mistake in the command line: printError adds kubectl's pointer to the command's help.
type usageError struct{ msg, command string }

func (e usageError) Error() string { return e.msg }

// printError writes err as kubectl does: one "error: " line per error, "Error from server (Reason): " for what
// the API server refused.
func printError(w io.Writer, err error) {
	var errs []error
	var agg utilerrors.Aggregate
	if errors.As(err, &agg) {
		errs = agg.Errors()
	} else {
		errs = []error{err}
	}
	for _, e := range errs {
		var status apierrors.APIStatus
		var usage usageError
		switch {
		case errors.As(e, &status) && status.Status().Reason != "" && errors.Unwrap(e) == nil:
			fprintf(w, "Error from server (%s): %s\n", status.Status().Reason, e.Error())
		case errors.As(e, &usage):
			fprintf(w, "error: %s\nSee '%s --help' for usage.\n", usage.msg, usage.command)
		default:
			fprintf(w, "error: %s\n", strings.TrimSuffix(e.Error(), "\n"))
		}
	}
}

// fprintf writes to the plugin's output. Like kubectl, the plugin does not stop for an output that fails.
func fprintf(w io.Writer, format string, a ...any) {
	_, _ = fmt.Fprintf(w, format, a...)
}

func fprintln(w io.Writer, line string) {
	fprintf(w, "%s\n", line)
}
