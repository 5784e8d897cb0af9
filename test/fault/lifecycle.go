// Package fault lets tests kill the operator in the middle of a restart request, the way a pod dies: it wraps
// runpolicy's KubeVirt lifecycle client and runs a crash at a chosen point of the next request.
package fault

import (
	"context"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	"github.com/runpolicy/runpolicy/internal/lifecycle"
)

// Point is where in a restart request the crash comes.
type Point int

const (
	// Before anything is sent.
	Before Point = iota
	// Between the request and the ended VMI's deletion (Replace); after the start call (Start).
	Between
	// After the whole request.
	After
)

// Lifecycle passes calls to KubeVirt. Once armed, the next restart request (Start or Replace) runs the crash at
// its point and returns context.Canceled, as a call cut short by the process's death would.
type Lifecycle struct {
	*lifecycle.Client
	mu    sync.Mutex
	at    Point
	crash func()
}

// Arm has the next restart request run crash at point at.
func (l *Lifecycle) Arm(at Point, crash func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.at, l.crash = at, crash
}

// take disarms and returns what was armed (a nil crash: nothing).
func (l *Lifecycle) take() (Point, func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, crash := l.at, l.crash
	l.crash = nil
	return at, crash
}

// Start is KubeVirt's start subresource, cut short where armed.
func (l *Lifecycle) Start(ctx context.Context, ns, name string) error {
	at, crash := l.take()
	if crash != nil && at == Before {
		crash()
		return context.Canceled
	}
	err := l.Client.Start(ctx, ns, name)
	if crash != nil {
		crash()
		return context.Canceled
	}
	return err
}

// Replace is runpolicy's restart request and the ended VMI's deletion, cut short where armed.
func (l *Lifecycle) Replace(ctx context.Context, ns, name string, ended types.UID) error {
	at, crash := l.take()
	if crash != nil && at == Before {
		crash()
		return context.Canceled
	}
	err := l.RequestStart(ctx, ns, name)
	if crash != nil && at == Between {
		crash()
		return context.Canceled
	}
	if err != nil {
		return err
	}
	err = l.DeleteEnded(ctx, ns, name, ended)
	if crash != nil {
		crash()
		return context.Canceled
	}
	return err
}
