package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// defaultTimeout is --timeout's default: the operator's own --vmop-timeout, which it counts from the signal.
const defaultTimeout = 10 * time.Minute

// operationOptions are the flags of start, stop, restart, migrate and evict.
type operationOptions struct {
	*options
	typ      v1alpha1.VirtualMachineOperationType
	force    bool
	wait     bool
	timeout  time.Duration
	selector string
	all      bool
}

func newOperationCommand(o *options, typ v1alpha1.VirtualMachineOperationType) *cobra.Command {
	oo := &operationOptions{options: o, typ: typ, timeout: defaultTimeout}
	verb := strings.ToLower(string(typ))
	cmd := &cobra.Command{
		Use:   verb + " (NAME... | -l SELECTOR | --all)",
		Short: fmt.Sprintf("%s VirtualMachines: one %s VirtualMachineOperation each", typ, typ),
		Long: fmt.Sprintf("Create a %s VirtualMachineOperation for each selected runpolicy.io VirtualMachine of the "+
			"namespace. Every named VirtualMachine must exist, otherwise none is created. With --wait, wait until "+
			"each operation is Completed; an operation that ends Failed (its reason and message are printed, "+
			"e.g. Superseded, NotApplicableForRunPolicy) or is not finished within --timeout makes the exit "+
			"status non-zero.", typ),
		Example: operationExample(typ),
		RunE: func(cmd *cobra.Command, args []string) error {
			return oo.run(cmd.Context(), cmd, args)
		},
	}
	f := cmd.Flags()
	if typ == v1alpha1.OperationStop || typ == v1alpha1.OperationRestart {
		f.BoolVar(&oo.force, "force", false, "Stop the guest at once (grace period 0)")
	}
	f.BoolVar(&oo.wait, "wait", false, "Wait until every operation is Completed; non-zero exit status if one fails or times out")
	f.DurationVar(&oo.timeout, "timeout", defaultTimeout, "How long --wait waits for all operations (0: no limit)")
	f.StringVarP(&oo.selector, "selector", "l", "", "Select the VirtualMachines by label (e.g. -l tier=web)")
	f.BoolVar(&oo.all, "all", false, "Select every VirtualMachine of the namespace")
	cmd.MarkFlagsMutuallyExclusive("selector", "all")
	return cmd
}

func operationExample(typ v1alpha1.VirtualMachineOperationType) string {
	switch typ {
	case v1alpha1.OperationStart:
		return "  # Start web and wait until it runs\n  kubectl runpolicy start web --wait\n\n" +
			"  # Start every VirtualMachine labelled tier=batch in namespace jobs\n  kubectl runpolicy start -n jobs -l tier=batch"
	case v1alpha1.OperationStop:
		return "  # Stop web and db, waiting up to 2 minutes\n  kubectl runpolicy stop web db --wait --timeout 2m\n\n" +
			"  # Stop every VirtualMachine of the namespace at once (grace period 0)\n  kubectl runpolicy stop --all --force"
	case v1alpha1.OperationMigrate:
		return "  # Live-migrate web to another node (a KubeVirt VirtualMachineInstanceMigration) and wait until it is done\n" +
			"  kubectl runpolicy migrate web --wait"
	case v1alpha1.OperationEvict:
		return "  # Move web off its node: live-migrated, or restarted where the scheduler places it when KubeVirt cannot\n" +
			"  # live-migrate it (AlwaysOn and AlwaysOnUntilStoppedManually only)\n" +
			"  kubectl runpolicy evict web --wait\n\n" +
			"  # Evict every VirtualMachine labelled tier=web\n  kubectl runpolicy evict -l tier=web"
	default:
		return "  # Restart web (a new VMI with the current spec) and wait until it runs again\n" +
			"  kubectl runpolicy restart web --wait\n\n" +
			"  # Restart every VirtualMachine labelled tier=web\n  kubectl runpolicy restart -l tier=web"
	}
}

func (o *operationOptions) run(ctx context.Context, cmd *cobra.Command, names []string) error {
	if err := o.validate(cmd, names); err != nil {
		return err
	}
	c, ns, err := o.connect()
	if err != nil {
		return err
	}
	vms, err := selectVMs(ctx, c, ns, names, o.selector, o.all)
	if err != nil {
		return err
	}
	created := make([]*v1alpha1.VirtualMachineOperation, 0, len(vms))
	for _, vm := range vms {
		op := o.operationFor(ns, vm)
		if err := c.Create(ctx, op, client.FieldOwner(FieldManager)); err != nil {
			return err
		}
		fprintf(o.streams.Out, "%s created\n", operationRef(op.Name))
		created = append(created, op)
	}
	if !o.wait {
		return nil
	}
	return waitForOperations(ctx, c, ns, created, o.timeout, o.streams.Out, o.streams.ErrOut)
}

func (o *operationOptions) validate(cmd *cobra.Command, names []string) error {
	var msg string
	switch {
	case len(names) > 0 && (o.selector != "" || o.all):
		msg = "VirtualMachine names cannot be given together with -l or --all"
	case len(names) == 0 && o.selector == "" && !o.all:
		msg = "name at least one VirtualMachine, or select them with -l SELECTOR or --all"
	case cmd.Flags().Changed("timeout") && !o.wait:
		msg = "--timeout applies to --wait only"
	case o.timeout < 0:
		msg = "--timeout must not be negative"
	default:
		return nil
	}
	return usageError{msg: msg, command: cmd.CommandPath()}
}

// operationFor is the operation the plugin creates for vm: generateName "<vm>-<type>-", labelled as the
// plugin's.
func (o *operationOptions) operationFor(ns string, vm *v1alpha1.VirtualMachine) *v1alpha1.VirtualMachineOperation {
	return &v1alpha1.VirtualMachineOperation{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:    ns,
			GenerateName: vm.Name + "-" + strings.ToLower(string(o.typ)) + "-",
			Labels:       map[string]string{LabelCreatedBy: FieldManager},
		},
		Spec: v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: vm.Name, Type: o.typ, Force: o.force},
	}
}

// selectVMs returns the VirtualMachines named, or matching selector, or all of the namespace. Every named one
// must exist: the NotFound errors of all missing ones are returned together.
func selectVMs(ctx context.Context, c client.Client, ns string, names []string, selector string, all bool) ([]*v1alpha1.VirtualMachine, error) {
	if len(names) > 0 {
		var vms []*v1alpha1.VirtualMachine
		var errs []error
		seen := map[string]bool{}
		for _, name := range names {
			if seen[name] {
				continue
			}
			seen[name] = true
			vm := &v1alpha1.VirtualMachine{}
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, vm); err != nil {
				errs = append(errs, err)
				continue
			}
			vms = append(vms, vm)
		}
		if len(errs) > 0 {
			return nil, utilerrors.NewAggregate(errs)
		}
		return vms, nil
	}
	opts := []client.ListOption{client.InNamespace(ns)}
	if selector != "" {
		sel, err := labels.Parse(selector)
		if err != nil {
			return nil, fmt.Errorf("-l %s: %w", selector, err)
		}
		opts = append(opts, client.MatchingLabelsSelector{Selector: sel})
	}
	list := &v1alpha1.VirtualMachineList{}
	if err := c.List(ctx, list, opts...); err != nil {
		return nil, err
	}
	if len(list.Items) == 0 {
		if !all {
			return nil, fmt.Errorf("no VirtualMachines in namespace %q match -l %s", ns, selector)
		}
		return nil, fmt.Errorf("no VirtualMachines in namespace %q", ns)
	}
	vms := make([]*v1alpha1.VirtualMachine, len(list.Items))
	for i := range list.Items {
		vms[i] = &list.Items[i]
	}
	return vms, nil
}

// operationRef is how kubectl names an operation in its output.
func operationRef(name string) string {
	return "virtualmachineoperation.runpolicy.io/" + name
}
