package launcher

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	kvv1 "kubevirt.io/api/core/v1"
)

// Domain is what virt-launcher reports of its libvirt domain (KubeVirt's api.Domain, summarised by launcherctl).
type Domain struct {
	Name string `json:"name"`
	UID  string `json:"uid,omitempty"`
	// Status and Reason are KubeVirt's names of libvirt's state and reason (api.LifeCycle, api.StateChangeReason),
	// e.g. Running/Unknown, Shutoff/Shutdown, Shutoff/Destroyed.
	Status string `json:"status"`
	Reason string `json:"reason"`
	// Deleted marks virt-launcher's final delete notification.
	Deleted bool `json:"deleted,omitempty"`
	ACPI    bool `json:"acpi,omitempty"`
}

// DomainEvent is one domain event virt-launcher sent to the notify server.
type DomainEvent struct {
	Type   string // ADDED, MODIFIED, DELETED, ERROR
	Domain *Domain
}

// K8sEvent is one Kubernetes event virt-launcher sent for its VMI.
type K8sEvent struct{ Type, Reason, Message string }

type handlerMessage struct {
	Kind    string  `json:"kind"`
	Op      string  `json:"op,omitempty"`
	Error   string  `json:"error,omitempty"`
	Type    string  `json:"type,omitempty"`
	Domain  *Domain `json:"domain,omitempty"`
	PID     int     `json:"pid,omitempty"`
	Reason  string  `json:"reason,omitempty"`
	Message string  `json:"message,omitempty"`
}

// Handler is virt-handler's side of one launcher pod: launcherctl handler, which talks to virt-launcher with
// KubeVirt's own cmd-client and notify-server packages.
type Handler struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	mu      sync.Mutex // one command at a time
	replies chan handlerMessage
	ready   chan struct{}
	done    chan struct{}

	evMu     sync.Mutex
	events   []DomainEvent
	k8s      []K8sEvent
	notify   chan struct{} // closed and replaced on every event
	pid      int
	readErr  error
	closeOne sync.Once
}

func startHandler(launcherctl, socket, handlerDir string, nonRoot bool, logPath string) (*Handler, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	h := &Handler{replies: make(chan handlerMessage, 1), ready: make(chan struct{}), done: make(chan struct{}),
		notify: make(chan struct{})}
	h.cmd = exec.Command(launcherctl, "handler", "--socket", socket, "--handler-dir", handlerDir,
		fmt.Sprintf("--non-root=%t", nonRoot))
	h.cmd.Stderr = logf
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := h.cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, err
	}
	go func() {
		defer close(h.done)
		defer func() { _ = logf.Close() }()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			_, _ = fmt.Fprintf(logf, "<- %s\n", sc.Bytes())
			var m handlerMessage
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				continue
			}
			switch m.Kind {
			case "ready":
				h.pid = m.PID
				close(h.ready)
			case "reply":
				h.replies <- m
			case "domain":
				h.record(func() { h.events = append(h.events, DomainEvent{Type: m.Type, Domain: m.Domain}) })
			case "event":
				h.record(func() { h.k8s = append(h.k8s, K8sEvent{Type: m.Type, Reason: m.Reason, Message: m.Message}) })
			}
		}
		h.readErr = h.cmd.Wait()
	}()
	return h, nil
}

func (h *Handler) record(f func()) {
	h.evMu.Lock()
	defer h.evMu.Unlock()
	f()
	close(h.notify)
	h.notify = make(chan struct{})
}

// WaitReady waits until virt-launcher's cmd socket answers (virt-handler's launcher client is ready) and returns
// virt-launcher's pid as the node sees it.
func (h *Handler) WaitReady(ctx context.Context) (int, error) {
	select {
	case <-h.ready:
		return h.pid, nil
	case <-h.done:
		return 0, fmt.Errorf("launcherctl handler exited before virt-launcher was ready: %v", h.readErr)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (h *Handler) call(ctx context.Context, op string, vmi *kvv1.VirtualMachineInstance) (handlerMessage, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	b, err := json.Marshal(struct {
		Op  string                       `json:"op"`
		VMI *kvv1.VirtualMachineInstance `json:"vmi,omitempty"`
	}{op, vmi})
	if err != nil {
		return handlerMessage{}, err
	}
	if _, err := h.stdin.Write(append(b, '\n')); err != nil {
		return handlerMessage{}, fmt.Errorf("%s: %w", op, err)
	}
	select {
	case r := <-h.replies:
		if r.Error != "" {
			return r, fmt.Errorf("%s: %s", op, r.Error)
		}
		return r, nil
	case <-h.done:
		return handlerMessage{}, fmt.Errorf("%s: launcherctl handler exited: %v", op, h.readErr)
	case <-ctx.Done():
		return handlerMessage{}, fmt.Errorf("%s: %w", op, ctx.Err())
	}
}

// Sync is virt-handler's SyncVirtualMachine: virt-launcher defines and starts the VMI's domain.
func (h *Handler) Sync(ctx context.Context, vmi *kvv1.VirtualMachineInstance) error {
	_, err := h.call(ctx, "sync", vmi)
	return err
}

// Shutdown is ShutdownVirtualMachine (ACPI power button).
func (h *Handler) Shutdown(ctx context.Context) error {
	_, err := h.call(ctx, "shutdown", nil)
	return err
}

// KillDomain is KillVirtualMachine (destroy).
func (h *Handler) KillDomain(ctx context.Context) error {
	_, err := h.call(ctx, "kill", nil)
	return err
}

// DeleteDomain is virt-handler's DeleteDomain (undefine), after which virt-launcher sends its final delete
// notification and exits.
func (h *Handler) DeleteDomain(ctx context.Context) error {
	_, err := h.call(ctx, "delete", nil)
	return err
}

// GetDomain is GetDomain; nil when there is none.
func (h *Handler) GetDomain(ctx context.Context) (*Domain, error) {
	r, err := h.call(ctx, "domain", nil)
	return r.Domain, err
}

// Events are the domain events received so far, in order.
func (h *Handler) Events() []DomainEvent {
	h.evMu.Lock()
	defer h.evMu.Unlock()
	return append([]DomainEvent(nil), h.events...)
}

// K8sEvents are the Kubernetes events virt-launcher sent so far.
func (h *Handler) K8sEvents() []K8sEvent {
	h.evMu.Lock()
	defer h.evMu.Unlock()
	return append([]K8sEvent(nil), h.k8s...)
}

// WaitEvent waits for a domain event (among all received, the first included) that satisfies match.
func (h *Handler) WaitEvent(ctx context.Context, match func(DomainEvent) bool) (DomainEvent, error) {
	seen := 0
	for {
		h.evMu.Lock()
		evs, notify := h.events[seen:], h.notify
		seen = len(h.events)
		h.evMu.Unlock()
		for _, e := range evs {
			if match(e) {
				return e, nil
			}
		}
		select {
		case <-notify:
		case <-h.done:
			return DomainEvent{}, fmt.Errorf("launcherctl handler exited: %v", h.readErr)
		case <-ctx.Done():
			return DomainEvent{}, ctx.Err()
		}
	}
}

// Close stops launcherctl handler (its stdin is closed) and waits for it.
func (h *Handler) Close() {
	h.closeOne.Do(func() {
		_ = h.stdin.Close()
		<-h.done
	})
}

// Phase is virt-handler's VMI phase for a domain (pkg/virt-handler/vm.go calculateVmPhaseForStatusReason), for a
// VMI with a termination grace period and no migration: current is returned when the domain says nothing new.
func Phase(d *Domain, current kvv1.VirtualMachineInstancePhase) kvv1.VirtualMachineInstancePhase {
	if d == nil {
		return current
	}
	switch d.Status {
	case "Shutoff", "Crashed":
		switch d.Reason {
		case "Crashed", "Panicked":
			return kvv1.Failed
		case "Destroyed":
			if d.ACPI { // with ACPI a destroyed domain is one that did not stop within its grace period
				return kvv1.Failed
			}
			return kvv1.Succeeded
		case "Shutdown", "Saved", "FromSnapshot":
			return kvv1.Succeeded
		}
	case "Paused":
		if d.Reason == "PausedPostcopyFailed" {
			return kvv1.Failed
		}
		return kvv1.Running
	case "Running", "Blocked", "PMSuspended":
		return kvv1.Running
	}
	return current
}

// Follow is virt-handler's loop for one VMI: it syncs vmi, reports each phase change (from Scheduled) with the
// domain that caused it, and once the phase is final deletes the domain, as virt-handler does for a finalized VMI
// ("Removing domain and ephemeral data for finalized vmi"). It returns the final phase and domain.
func (h *Handler) Follow(ctx context.Context, vmi *kvv1.VirtualMachineInstance,
	onPhase func(kvv1.VirtualMachineInstancePhase, *Domain)) (kvv1.VirtualMachineInstancePhase, *Domain, error) {
	if _, err := h.WaitReady(ctx); err != nil {
		return "", nil, err
	}
	if err := h.Sync(ctx, vmi); err != nil {
		return "", nil, err
	}
	phase := kvv1.Scheduled
	var last *Domain
	_, err := h.WaitEvent(ctx, func(e DomainEvent) bool {
		if e.Domain == nil {
			return false
		}
		last = e.Domain
		if p := Phase(e.Domain, phase); p != phase {
			phase = p
			if onPhase != nil {
				onPhase(phase, e.Domain)
			}
		}
		return phase == kvv1.Succeeded || phase == kvv1.Failed
	})
	if err != nil {
		return phase, last, err
	}
	if err := h.DeleteDomain(ctx); err != nil && !strings.Contains(err.Error(), "code = Unavailable") {
		// Unavailable: virt-launcher exited between the final domain event and the delete (after a guest reset
		// it shuts itself down); virt-handler's next pass finds its socket gone and cleans up without it.
		return phase, last, err
	}
	return phase, last, nil
}
