package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// reportedError ends the command with a non-zero exit status; what went wrong was already written to ErrOut.
type reportedError struct{ n int }

func (e reportedError) Error() string { return fmt.Sprintf("%d operation(s) did not complete", e.n) }

// waitForOperations waits until each of ops (just created, oldest first) is Completed or Failed, or timeout (0:
// none) passes. It prints "<op> Completed" on out as each completes, and an "error: " line on errOut for each
// that failed (with the reason and message of its Completed condition), was deleted, or was not finished in
// time. It watches the namespace's operations created by the plugin from the oldest one's resourceVersion, so
// it sees every later change of all of them; when the watch ends it resumes from the last version seen, and
// lists again when that version is too old.
func waitForOperations(ctx context.Context, c client.WithWatch, ns string, ops []*v1alpha1.VirtualMachineOperation,
	timeout time.Duration, out, errOut io.Writer) error {
	if len(ops) == 0 {
		return nil
	}
	parent := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	w := &waiter{c: c, ns: ns, out: out, errOut: errOut, pending: map[string]*v1alpha1.VirtualMachineOperation{},
		shown: map[string]string{}}
	for _, op := range ops {
		w.order = append(w.order, op.Name)
		w.pending[op.Name] = op
	}
	rv := ops[0].ResourceVersion
	for len(w.pending) > 0 && ctx.Err() == nil {
		next, err := w.watch(ctx, rv)
		switch {
		case ctx.Err() != nil:
		case err != nil && !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err):
			return err
		case err != nil || next == "":
			// The version is too old (or the watch failed): read the operations as they are now.
			if next, err = w.list(ctx); err != nil && ctx.Err() == nil {
				return err
			}
		}
		if next == rv && ctx.Err() == nil {
			// The watch ended without news: do not hammer the API server.
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		if next != "" {
			rv = next
		}
	}
	if len(w.pending) > 0 {
		if parent.Err() != nil {
			return parent.Err()
		}
		for _, name := range w.order {
			if op, ok := w.pending[name]; ok {
				fprintf(errOut, "error: timed out after %s waiting for %s: %s\n", timeout, operationRef(name), describePhase(op))
				w.failed++
			}
		}
	}
	if w.failed > 0 {
		return reportedError{n: w.failed}
	}
	return nil
}

type waiter struct {
	c           client.WithWatch
	ns          string
	out, errOut io.Writer
	order       []string
	pending     map[string]*v1alpha1.VirtualMachineOperation
	// shown is the last wait for a start slot printed per operation.
	shown  map[string]string
	failed int
}

// watch follows the plugin's operations from resourceVersion rv until every pending one finished, the watch
// ends or ctx is done. It returns the last resourceVersion seen ("" when the watch must be started from a new
// list) and the error that ended it.
func (w *waiter) watch(ctx context.Context, rv string) (string, error) {
	wi, err := w.c.Watch(ctx, &v1alpha1.VirtualMachineOperationList{}, &client.ListOptions{
		Namespace:     w.ns,
		LabelSelector: createdByPlugin,
		Raw:           &metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true},
	})
	if err != nil {
		return rv, err
	}
	defer wi.Stop()
	for len(w.pending) > 0 {
		select {
		case <-ctx.Done():
			return rv, nil
		case ev, ok := <-wi.ResultChan():
			if !ok {
				return rv, nil
			}
			switch ev.Type {
			case watch.Error:
				return "", apierrors.FromObject(ev.Object)
			case watch.Added, watch.Modified, watch.Deleted, watch.Bookmark:
				op, ok := ev.Object.(*v1alpha1.VirtualMachineOperation)
				if !ok {
					continue
				}
				rv = op.ResourceVersion
				if ev.Type == watch.Deleted {
					w.deleted(op)
				} else if ev.Type != watch.Bookmark {
					w.update(op)
				}
			}
		}
	}
	return rv, nil
}

// list reads the plugin's operations as they are now and returns the list's resourceVersion.
func (w *waiter) list(ctx context.Context) (string, error) {
	list := &v1alpha1.VirtualMachineOperationList{}
	if err := w.c.List(ctx, list, &client.ListOptions{Namespace: w.ns, LabelSelector: createdByPlugin}); err != nil {
		return "", err
	}
	found := map[string]bool{}
	for i := range list.Items {
		op := &list.Items[i]
		if prev, ok := w.pending[op.Name]; ok && prev.UID == op.UID {
			found[op.Name] = true
			w.update(op)
		}
	}
	for _, name := range w.order {
		if op, ok := w.pending[name]; ok && !found[name] {
			w.deleted(op)
		}
	}
	return list.ResourceVersion, nil
}

// update takes a new version of an operation and reports it when it finished.
func (w *waiter) update(op *v1alpha1.VirtualMachineOperation) {
	prev, ok := w.pending[op.Name]
	if !ok || prev.UID != op.UID {
		return
	}
	w.pending[op.Name] = op
	switch op.Status.Phase {
	case v1alpha1.OperationCompleted:
		fprintf(w.out, "%s Completed\n", operationRef(op.Name))
	case v1alpha1.OperationFailed:
		fprintf(w.errOut, "error: %s Failed%s\n", operationRef(op.Name), reasonAndMessage(op))
		w.failed++
	default:
		w.showStartSlot(op)
		return
	}
	delete(w.pending, op.Name)
}

// showStartSlot prints, once per place, that a pending operation waits for one of the operator's start slots
// (--max-concurrent-starts): a wait the user did not cause and may otherwise take for a hang.
func (w *waiter) showStartSlot(op *v1alpha1.VirtualMachineOperation) {
	cond := meta.FindStatusCondition(op.Status.Conditions, v1alpha1.OperationConditionCompleted)
	if cond == nil || cond.Reason != v1alpha1.OperationReasonWaitingForStartSlot || w.shown[op.Name] == cond.Message {
		return
	}
	w.shown[op.Name] = cond.Message
	fprintf(w.out, "%s Pending%s\n", operationRef(op.Name), reasonAndMessage(op))
}

func (w *waiter) deleted(op *v1alpha1.VirtualMachineOperation) {
	prev, ok := w.pending[op.Name]
	if !ok || prev.UID != op.UID {
		return
	}
	fprintf(w.errOut, "error: %s was deleted before it finished (last seen: %s)\n", operationRef(op.Name), describePhase(prev))
	w.failed++
	delete(w.pending, op.Name)
}

// createdByPlugin selects the operations the plugin created.
var createdByPlugin = labels.SelectorFromSet(labels.Set{LabelCreatedBy: FieldManager})

// reasonAndMessage is " (Reason): message" from the operation's Completed condition, or "".
func reasonAndMessage(op *v1alpha1.VirtualMachineOperation) string {
	cond := meta.FindStatusCondition(op.Status.Conditions, v1alpha1.OperationConditionCompleted)
	if cond == nil {
		return ""
	}
	s := ""
	if cond.Reason != "" {
		s = " (" + cond.Reason + ")"
	}
	if cond.Message != "" {
		s += ": " + cond.Message
	}
	return s
}

// describePhase says where an unfinished operation stands.
func describePhase(op *v1alpha1.VirtualMachineOperation) string {
	if op.Status.Phase == "" {
		return "no status yet (is the runpolicy operator running?)"
	}
	return "phase " + string(op.Status.Phase) + reasonAndMessage(op)
}
