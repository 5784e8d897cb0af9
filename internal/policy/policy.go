// Package policy is runpolicy's pure decision core: the runPolicy → runStrategy table and what to do after a VMI
// ended. It reads no cluster state; the reconcilers gather the inputs and apply the result.
package policy

import (
	"fmt"
	"time"

	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// RunStrategy is the KubeVirt runStrategy a policy maps to (docs/behaviour.md, "Policy → KubeVirt runStrategy").
//
// AlwaysOnUntilStoppedManually is Manual, except while it still has to be started: a VM created with that
// policy, or moved to it while stopped, gets Always until its first VMI exists (bootstrapping). The start is
// then carried by the KubeVirt object itself, so a crash of the operator between "decide to start" and "start"
// cannot lose it.
func RunStrategy(p v1alpha1.RunPolicy, bootstrapping bool) kvv1.VirtualMachineRunStrategy {
	switch p {
	case v1alpha1.RunPolicyAlwaysOff:
		return kvv1.RunStrategyHalted
	case v1alpha1.RunPolicyAlwaysOn:
		return kvv1.RunStrategyAlways
	case v1alpha1.RunPolicyAlwaysOnUntilStoppedManually:
		if bootstrapping {
			return kvv1.RunStrategyAlways
		}
		return kvv1.RunStrategyManual
	default: // Manual, and anything the CRD's enum lets through in the future
		return kvv1.RunStrategyManual
	}
}

// Rendered is the policy whose runStrategy the KubeVirt VM of a VM with policy p gets. Under a cap on starts
// (capped: the operator's --max-concurrent-starts), AlwaysOn is rendered as AlwaysOnUntilStoppedManually is —
// runStrategy Always until its first VMI exists, then Manual — and runpolicy itself restarts its VMIs whatever
// ended them (Decide), so that every start after the first goes through the start gate: KubeVirt's Always would
// start the VMIs of a whole cluster at once after a power-on.
func Rendered(p v1alpha1.RunPolicy, capped bool) v1alpha1.RunPolicy {
	if capped && p == v1alpha1.RunPolicyAlwaysOn {
		return v1alpha1.RunPolicyAlwaysOnUntilStoppedManually
	}
	return p
}

// Bootstrapping tells whether an AlwaysOnUntilStoppedManually VM still has to be started by KubeVirt's
// Always strategy. entering is true when the policy was just set (new VM, or changed from another policy);
// current is the runStrategy the KubeVirt VM has now; vmiExists whether a VMI exists.
func Bootstrapping(p v1alpha1.RunPolicy, entering bool, current kvv1.VirtualMachineRunStrategy, vmiExists bool) bool {
	if p != v1alpha1.RunPolicyAlwaysOnUntilStoppedManually || vmiExists {
		return false
	}
	return entering || current == kvv1.RunStrategyAlways
}

// Action is what the power controller does about a VMI that ended.
type Action string

const (
	// ActionNone: nothing to do (KubeVirt acts, or the VM is meant to stay as it is).
	ActionNone Action = "None"
	// ActionWait: the inputs are not complete yet (the launcher pod is still terminating); look again later.
	ActionWait Action = "Wait"
	// ActionRestart: start a new VMI from the current template now.
	ActionRestart Action = "Restart"
	// ActionRestartAfterBackoff: restart once the backoff delay has passed.
	ActionRestartAfterBackoff Action = "RestartAfterBackoff"
	// ActionStayStopped: leave the VM stopped and clean the finished VMI up so a later Start works.
	ActionStayStopped Action = "StayStopped"
)

// Ended describes a VMI that reached a final phase.
type Ended struct {
	// Failed is true for VMI phase Failed, false for Succeeded.
	Failed bool
	// Cause is what the hook sidecar's termination message says (CauseUnknown without a message).
	Cause shutdown.Cause
	// StoppedByUser is true when KubeVirt had a Stop request for the VMI, or someone deleted it while KubeVirt's
	// runStrategy does not delete ended VMIs by itself.
	StoppedByUser bool
	// RebootsStayInGuest is true when a guest reboot could not have ended the VMI: it ran without any hook sidecar
	// and without rebootPolicy Terminate, so QEMU rebooted in place (KubeVirt's on_reboot=restart). A clean end
	// without a recorded reason is then a guest poweroff.
	RebootsStayInGuest bool
}

// Source maps an ended VMI to the shutdown source reported in status.lastShutdown.
func (e Ended) Source() v1alpha1.ShutdownSource {
	switch {
	case e.StoppedByUser:
		return v1alpha1.ShutdownUser
	case e.Cause == shutdown.CauseGuestReset:
		return v1alpha1.ShutdownGuestReset
	case e.Cause == shutdown.CauseGuestShutdown:
		return v1alpha1.ShutdownGuestShutdown
	case e.Cause == shutdown.CauseHostReset:
		return v1alpha1.ShutdownHostReset
	case e.Cause == shutdown.CauseGuestPanic, e.Cause == shutdown.CauseHost, e.Failed:
		return v1alpha1.ShutdownCrash
	case e.Cause == shutdown.CauseUnknown && e.RebootsStayInGuest:
		return v1alpha1.ShutdownGuestShutdown
	default:
		return v1alpha1.ShutdownUnknown
	}
}

// Decision is the outcome of Decide.
type Decision struct {
	Action Action
	Source v1alpha1.ShutdownSource
	// Message explains the decision, for events and logs.
	Message string
}

// restartMessage explains a restart after a VMI ended from src.
func restartMessage(src v1alpha1.ShutdownSource) string {
	switch src {
	case v1alpha1.ShutdownGuestReset:
		return "The guest rebooted: restarting with the current spec"
	case v1alpha1.ShutdownHostReset:
		// A reset asked through KubeVirt: a reboot from outside.
		return "The VM was reset through KubeVirt (virtctl reset): restarting with the current spec"
	default:
		return fmt.Sprintf("The VM ended unexpectedly (%s): restarting after backoff", src)
	}
}

// KubeVirtAlways is the acting policy (ActingPolicy) while the KubeVirt VM is on runStrategy Always or
// RerunOnFailure: KubeVirt restarts the VM's VMIs itself, and runpolicy must not restart on top of it.
const KubeVirtAlways v1alpha1.RunPolicy = "KubeVirtAlways"

// Decide applies the policy table (docs/behaviour.md) to an ended VMI. p is the acting policy (ActingPolicy):
// AlwaysOn there is an AlwaysOn VM whose KubeVirt VM is on Manual (Rendered under a cap on starts), which runpolicy
// keeps running.
func Decide(p v1alpha1.RunPolicy, e Ended) Decision {
	src := e.Source()
	d := Decision{Source: src}
	switch p {
	case v1alpha1.RunPolicyAlwaysOff:
		// Halted: KubeVirt itself keeps the VM off.
		d.Action, d.Message = ActionNone, fmt.Sprintf("KubeVirt keeps an AlwaysOff VM off (%s)", src)
	case KubeVirtAlways:
		// Always: KubeVirt itself restarts the VM (with its own backoff).
		d.Action, d.Message = ActionNone, fmt.Sprintf("KubeVirt restarts the VM itself, runStrategy Always (%s)", src)
	case v1alpha1.RunPolicyAlwaysOn:
		switch src {
		case v1alpha1.ShutdownGuestReset, v1alpha1.ShutdownHostReset:
			d.Action, d.Message = ActionRestart, restartMessage(src)
		case v1alpha1.ShutdownGuestShutdown, v1alpha1.ShutdownUser:
			d.Action, d.Message = ActionRestart, fmt.Sprintf("The VM was stopped (%s): runPolicy AlwaysOn starts it again", src)
		default: // crash, unknown: as KubeVirt's Always, a failed VMI after a backoff, a clean end at once
			d.Action, d.Message = ActionRestartAfterBackoff, restartMessage(src)
			if !e.Failed {
				d.Action, d.Message = ActionRestart, fmt.Sprintf("The VM ended (%s): runPolicy AlwaysOn starts it again", src)
			}
		}
	case v1alpha1.RunPolicyManual:
		switch src {
		case v1alpha1.ShutdownGuestReset, v1alpha1.ShutdownHostReset:
			d.Action, d.Message = ActionRestart, restartMessage(src)
		default:
			d.Action, d.Message = ActionStayStopped, fmt.Sprintf("The VM ended (%s) and stays stopped under runPolicy Manual", src)
		}
	case v1alpha1.RunPolicyAlwaysOnUntilStoppedManually:
		switch src {
		case v1alpha1.ShutdownGuestReset, v1alpha1.ShutdownHostReset:
			d.Action, d.Message = ActionRestart, restartMessage(src)
		case v1alpha1.ShutdownGuestShutdown, v1alpha1.ShutdownUser:
			d.Action, d.Message = ActionStayStopped, fmt.Sprintf("The VM was stopped (%s) and stays stopped", src)
		default: // crash, unknown: never guessed as a reboot, but the policy wants the VM back
			d.Action, d.Message = ActionRestartAfterBackoff, restartMessage(src)
		}
	default:
		d.Action, d.Message = ActionNone, fmt.Sprintf("unknown runPolicy %q", p)
	}
	return d
}

// Backoff is the exponential restart delay after consecutive failures, like KubeVirt's CrashLoopBackOff.
type Backoff struct {
	Base time.Duration
	Max  time.Duration
}

// DefaultBackoff starts at KubeVirt's first crash-loop delay and ends at its cap: 10 s doubling up to 5 min
// (KubeVirt's own grows as 10·n² s plus up to 50% jitter, capped at 300 s; pkg/virt-controller/watch/vm).
var DefaultBackoff = Backoff{Base: 10 * time.Second, Max: 5 * time.Minute}

// Delay returns the wait before the restart that follows the n-th consecutive failure (n ≥ 1).
// The first failure restarts at once.
// A Max below Base counts as Base; the result never overflows or goes negative.
func (b Backoff) Delay(n int32) time.Duration {
	if n <= 1 || b.Base <= 0 {
		return 0
	}
	limit := max(b.Max, b.Base)
	d := b.Base
	for i := int32(2); i < n; i++ {
		if d >= limit/2 {
			return limit
		}
		d *= 2
	}
	return min(d, limit)
}
