package vmop

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// This file is the pure decision core of the VirtualMachineOperation controller (RULES.md): which operation may
// run, in which order, when a signal counts as taken and when an operation is done. It reads no cluster state.

// VMIState is what the current VMI (KubeVirt's, same name as the VM) looks like.
type VMIState string

const (
	// VMINone: no VMI.
	VMINone VMIState = "None"
	// VMIActive: a VMI that has not ended and is not being deleted.
	VMIActive VMIState = "Active"
	// VMIDeleting: a VMI being deleted (a stop is under way).
	VMIDeleting VMIState = "Deleting"
	// VMIFinal: a VMI that ended (Succeeded or Failed) and was not cleaned up yet.
	VMIFinal VMIState = "Final"
)

// StateOf classifies a VMI.
func StateOf(vmi *kvv1.VirtualMachineInstance) VMIState {
	switch {
	case vmi == nil:
		return VMINone
	case vmi.IsFinal():
		return VMIFinal
	case vmi.DeletionTimestamp != nil:
		return VMIDeleting
	default:
		return VMIActive
	}
}

// PolicyAllows applies the "Operations" table of docs/behaviour.md. When the policy refuses the operation, the message names
// the VM, the policy and what would work instead.
func PolicyAllows(vm string, p v1alpha1.RunPolicy, t v1alpha1.VirtualMachineOperationType) (bool, string) {
	switch p {
	case v1alpha1.RunPolicyManual, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually:
		return true, ""
	case v1alpha1.RunPolicyAlwaysOff:
		return false, fmt.Sprintf("VirtualMachine %s has runPolicy AlwaysOff: it is kept stopped and cannot be %s; "+
			"set spec.runPolicy to Manual or AlwaysOnUntilStoppedManually to start, stop and restart it with operations",
			vm, pastTense(t))
	case v1alpha1.RunPolicyAlwaysOn:
		switch t {
		case v1alpha1.OperationRestart, v1alpha1.OperationMigrate, v1alpha1.OperationEvict:
			return true, ""
		case v1alpha1.OperationStart:
			return false, fmt.Sprintf("VirtualMachine %s has runPolicy AlwaysOn: it is kept running, there is nothing to start; "+
				"use a Restart operation, or set spec.runPolicy to Manual to start and stop it with operations", vm)
		default:
			return false, fmt.Sprintf("VirtualMachine %s has runPolicy AlwaysOn: it cannot be stopped by an operation; "+
				"set spec.runPolicy to AlwaysOff to stop it, or to Manual or AlwaysOnUntilStoppedManually to stop it with a Stop operation", vm)
		}
	default:
		return false, fmt.Sprintf("VirtualMachine %s has an unknown runPolicy %q; set spec.runPolicy to Manual or "+
			"AlwaysOnUntilStoppedManually to use operations", vm, p)
	}
}

func pastTense(t v1alpha1.VirtualMachineOperationType) string {
	switch t {
	case v1alpha1.OperationStart:
		return "started"
	case v1alpha1.OperationStop:
		return "stopped"
	case v1alpha1.OperationMigrate:
		return "migrated"
	case v1alpha1.OperationEvict:
		return "evicted"
	default:
		return "restarted"
	}
}

// ActionOf is what an operation does with KubeVirt: its type, except for an Evict, which live-migrates (Migrate)
// until it chose to restart the VM instead (status.eviction.method Restart) and from then on is a Restart.
func ActionOf(op *v1alpha1.VirtualMachineOperation) v1alpha1.VirtualMachineOperationType {
	if op.Spec.Type != v1alpha1.OperationEvict {
		return op.Spec.Type
	}
	if e := op.Status.Eviction; e != nil && e.Method == v1alpha1.EvictionRestart {
		return v1alpha1.OperationRestart
	}
	return v1alpha1.OperationMigrate
}

// EvictByRestart tells whether an Evict of a VM that is not live-migratable may restart it: a restart is a stop and
// a start, as an eviction of the launcher pod would be, and under Manual a VM stopped that way stays stopped (the
// policy's answer to a failure), so the Evict is refused there rather than carried out differently from a drain.
func EvictByRestart(vm string, p v1alpha1.RunPolicy, notMigratable string) (bool, string) {
	switch p {
	case v1alpha1.RunPolicyAlwaysOn, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually:
		return true, ""
	default:
		return false, fmt.Sprintf("VirtualMachine %s (runPolicy %s) cannot be live-migrated (%s), so evicting it means "+
			"stopping it, and runPolicy %s keeps it stopped after that (as after a node drain); use a Restart operation "+
			"to start it again where the scheduler places it, or a Stop operation", vm, p, notMigratable, p)
	}
}

// Verdict is what the VM's current state means for an operation whose turn it is.
type Verdict string

const (
	// Run: send the signal.
	Run Verdict = "Run"
	// Wait: the VM is passing through a phase that the operation must wait out.
	Wait Verdict = "Wait"
	// Refuse: the operation cannot apply to the VM as it is (NotApplicableForVMPhase).
	Refuse Verdict = "Refuse"
)

// PhaseAllows decides whether an operation can run against the VM now. The VM's phase (status.phase) and the
// VMI's state are both inputs: the phase is what users see; the VMI is KubeVirt's truth, which the phase follows
// with a short lag (right after a Stop completes, the VM may still read Stopping for a moment). startPending tells
// that KubeVirt holds a Start request for the VM (a Restart's, a Start's): a Stop runs then to remove it, even
// when no VMI runs, since KubeVirt would otherwise start the VM once the current VMI is gone.
func PhaseAllows(vm string, p v1alpha1.RunPolicy, phase v1alpha1.VirtualMachinePhase, vmi VMIState, startPending bool,
	t v1alpha1.VirtualMachineOperationType, force bool) (Verdict, string) {
	where := fmt.Sprintf("VirtualMachine %s (runPolicy %s) is %s", vm, p, phaseText(phase, vmi))
	if phase == v1alpha1.VirtualMachineTerminating {
		return Refuse, where + ": it is being deleted, no operation applies"
	}
	switch t {
	case v1alpha1.OperationStart:
		switch {
		case vmi == VMIActive:
			return Refuse, where + ": it is already started; use a Restart operation to boot it again"
		case vmi == VMIDeleting || phase == v1alpha1.VirtualMachineStopping || phase == v1alpha1.VirtualMachineStarting ||
			phase == v1alpha1.VirtualMachineRunning || phase == "":
			return Wait, where + ": the Start runs once it is Stopped"
		default: // Stopped, or Pending without a VMI (waiting for a restart, or not yet created)
			return Run, ""
		}
	case v1alpha1.OperationStop:
		switch vmi {
		case VMIActive:
			return Run, ""
		case VMIDeleting:
			if force || startPending {
				return Run, ""
			}
			return Refuse, where + ": it is already stopping; create a Stop operation with force: true to stop it at once"
		default:
			if startPending {
				return Run, "" // nothing runs, but KubeVirt would start it: the Stop removes the Start request
			}
			if phase == v1alpha1.VirtualMachineStarting {
				// A start on its way that KubeVirt does not hold yet: runpolicy's restart after a guest reboot,
				// recorded and about to be sent, or a Start just served whose VMI is not seen yet.
				return Wait, where + ": a new VMI is about to start; the Stop runs once KubeVirt has it"
			}
			return Refuse, where + ": it is not running, there is nothing to stop"
		}
	default: // Restart
		switch vmi {
		case VMIActive:
			return Run, ""
		case VMIDeleting:
			return Refuse, where + ": it is stopping; use a Start operation once it is Stopped"
		default:
			return Refuse, where + ": it is not running; use a Start operation instead"
		}
	}
}

func phaseText(phase v1alpha1.VirtualMachinePhase, vmi VMIState) string {
	if phase == "" {
		phase = "without a phase yet"
	}
	switch vmi {
	case VMINone:
		return fmt.Sprintf("%s with no VMI", phase)
	case VMIFinal:
		return fmt.Sprintf("%s with an ended VMI", phase)
	case VMIDeleting:
		return fmt.Sprintf("%s with its VMI being deleted", phase)
	default:
		return fmt.Sprintf("%s with a VMI", phase)
	}
}

// Op is what the queue rules need to know about one operation.
type Op struct {
	Name     string
	Created  time.Time
	Type     v1alpha1.VirtualMachineOperationType
	Force    bool
	Finished bool
	// InProgress: KubeVirt accepted its signal and it is not finished.
	InProgress bool
}

// OpOf summarises an operation for the queue rules.
func OpOf(o *v1alpha1.VirtualMachineOperation) Op {
	return Op{Name: o.Name, Created: o.CreationTimestamp.Time, Type: o.Spec.Type, Force: o.Spec.Force, Finished: Finished(o),
		InProgress: o.Status.Phase == v1alpha1.OperationInProgress}
}

// Finished tells whether an operation reached a final phase.
func Finished(o *v1alpha1.VirtualMachineOperation) bool {
	return o.Status.Phase == v1alpha1.OperationCompleted || o.Status.Phase == v1alpha1.OperationFailed
}

// older orders operations by creation time, then name (creation timestamps have one-second precision).
func older(a, b Op) int {
	if c := a.Created.Compare(b.Created); c != 0 {
		return c
	}
	return cmp.Compare(a.Name, b.Name)
}

// Supersedes tells whether newer, when it is created, ends older: a forced Stop ends every operation that is not
// itself forced (a pending or running Start or Restart, and a graceful Stop that may hang).
func Supersedes(newer, older Op) bool {
	return newer.Type == v1alpha1.OperationStop && newer.Force && !older.Force
}

// Turn is the queue's answer for one operation.
type Turn struct {
	// SupersededBy names the newer operation that ends this one.
	SupersededBy string
	// WaitFor names the older unfinished operation this one waits for.
	WaitFor string
}

// Queue decides one operation's turn among all operations of the same VM (self included, any order).
// Operations run one at a time, oldest first; a forced Stop does not wait for the operations it supersedes. An
// operation in progress is waited for even when it is newer (two created in the same second, the newer by name
// reconciled first), so that no operation sends while another's signal is under way.
func Queue(self Op, all []Op) Turn {
	ops := slices.Clone(all)
	slices.SortFunc(ops, older)
	for _, o := range ops {
		if o.Name == self.Name || o.Finished {
			continue
		}
		if older(o, self) > 0 && Supersedes(o, self) {
			return Turn{SupersededBy: o.Name}
		}
	}
	for _, o := range ops {
		newer := older(o, self) > 0
		if o.Name == self.Name || o.Finished || (newer && !o.InProgress) {
			continue
		}
		if !newer && Supersedes(self, o) {
			continue
		}
		// An older operation that a newer forced Stop supersedes is ending; the forced Stop is the one to wait for.
		if by := supersededBy(o, ops); by != "" && by != self.Name {
			return Turn{WaitFor: by}
		}
		return Turn{WaitFor: o.Name}
	}
	return Turn{}
}

func supersededBy(o Op, ops []Op) string {
	for _, n := range ops {
		if n.Name != o.Name && !n.Finished && older(n, o) > 0 && Supersedes(n, o) {
			return n.Name
		}
	}
	return ""
}

// KubeVirtView is what KubeVirt shows about the VM when the controller checks a signal.
type KubeVirtView struct {
	// VMIUID and VMI describe the current VMI (UID empty when there is none).
	VMIUID types.UID
	VMI    VMIState
	// VMIRunning is true when the current VMI is in phase Running and not being deleted.
	VMIRunning bool
	// VMIGraceZero is true when the current VMI's terminationGracePeriodSeconds is 0: what a forced stop (virt-api's
	// stop with gracePeriod 0) writes before it asks KubeVirt to stop the VMI.
	VMIGraceZero bool
	// StopRequestedFor lists the VMI UIDs of pending Stop state-change requests on the KubeVirt VM.
	StopRequestedFor []types.UID
	// StartRequested is true when a Start state-change request is pending on the KubeVirt VM.
	StartRequested bool
}

// ViewOf builds the KubeVirt view from the KubeVirt VM (may be nil) and VMI (may be nil).
func ViewOf(kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance) KubeVirtView {
	v := KubeVirtView{VMI: StateOf(vmi)}
	if vmi != nil {
		v.VMIUID = vmi.UID
		v.VMIRunning = vmi.Status.Phase == kvv1.Running && vmi.DeletionTimestamp == nil
		v.VMIGraceZero = vmi.Spec.TerminationGracePeriodSeconds != nil && *vmi.Spec.TerminationGracePeriodSeconds == 0
	}
	if kv != nil {
		for _, r := range kv.Status.StateChangeRequests {
			switch {
			case r.Action == kvv1.StopRequest && r.UID != nil:
				v.StopRequestedFor = append(v.StopRequestedFor, *r.UID)
			case r.Action == kvv1.StartRequest:
				v.StartRequested = true
			}
		}
	}
	return v
}

// Action is what an operation that recorded its target does next with KubeVirt.
type Action string

const (
	// Send: call the operation's subresource.
	Send Action = "Send"
	// DropStart: a Stop first removes the Start requests KubeVirt holds (another operation's, typically the
	// Restart it superseded), with a JSON patch tested on the requests as read; it sends its stop in a later pass.
	DropStart Action = "DropStart"
	// Taken: KubeVirt shows this operation's own signal (sent by a pass that ended before it could record it), or
	// for a Stop, that the VM is stopped with no Start pending: record it as sent, send nothing.
	Taken Action = "Taken"
)

// SignalAction decides what an operation whose turn it is and that recorded target (the VMI UID before the
// signal, empty if there was none) does next. It is how a pass that follows a crash between the subresource call
// and the status write knows not to send again; it counts only what the operation's own signal leaves, never
// another operation's request (RULES.md, "Exactly once"):
//
//   - Start: a Start request is pending, or a VMI other than target is active.
//   - Restart: a Start request is pending (KubeVirt's restart is [Stop{target}, Start]), or a VMI other than target
//     exists. A Stop request or a deletion alone is a Stop's, not this Restart's.
//   - Stop: never with a Start pending (a Stop leaves none; it removes it first: DropStart). The VM is stopped (no
//     VMI, or an ended one): taken, whoever stopped it. Otherwise target is stopping (a Stop request with its UID, or
//     being deleted), and for a forced Stop with grace period 0: a graceful stop or a Restart's stop under way is
//     not a forced Stop's signal, which is sent anyway.
func SignalAction(t v1alpha1.VirtualMachineOperationType, force bool, target types.UID, v KubeVirtView) Action {
	switch t {
	case v1alpha1.OperationStart:
		// Not a Stop request for the ended target VMI: that may be what is left of the stop that ended it.
		if v.StartRequested || (v.VMI == VMIActive && v.VMIUID != target) {
			return Taken
		}
	case v1alpha1.OperationRestart:
		if target != "" && (v.StartRequested || (v.VMIUID != "" && v.VMIUID != target)) {
			return Taken
		}
	default: // Stop
		switch {
		case v.StartRequested:
			return DropStart
		case v.VMI == VMINone || v.VMI == VMIFinal:
			return Taken
		case target != "" && v.VMIUID == target && (slices.Contains(v.StopRequestedFor, target) || v.VMI == VMIDeleting) &&
			(!force || v.VMIGraceZero):
			return Taken
		}
	}
	return Send
}

// Overtaken tells whether a VMI appeared after a Stop's signal that nothing stops: an active VMI other than target,
// with no Stop request for it and no Start pending (a pending Start is removed first). virt-controller serves Start
// requests from its informer's copy of the VM, so a Start that the Stop removed through the API server may still be
// served after the Stop saw the VM stopped; a user's start while the Stop is in progress shows the same. The Stop
// stops that VMI too: until it completes or times out, the user's stop wins.
func Overtaken(target types.UID, v KubeVirtView) bool {
	return v.VMI == VMIActive && v.VMIUID != target && !v.StartRequested && !slices.Contains(v.StopRequestedFor, v.VMIUID)
}

// Done tells whether KubeVirt reports the operation's target state: Start — a VMI other than target is Running;
// Stop — no VMI is left running and no Start is pending (KubeVirt would serve it); Restart — a VMI other than the
// one restarted is Running.
func Done(t v1alpha1.VirtualMachineOperationType, target types.UID, v KubeVirtView) bool {
	switch t {
	case v1alpha1.OperationStop:
		return (v.VMI == VMINone || v.VMI == VMIFinal) && !v.StartRequested
	default:
		return v.VMIRunning && v.VMIUID != target
	}
}

// Collect picks the finished operations of one VM to delete: those finished longer than ttl ago (ttl 0: never),
// and all but the newest max (max 0: no limit).
func Collect(finished []Finish, now time.Time, ttl time.Duration, max int) (remove []string) {
	ops := slices.Clone(finished)
	slices.SortFunc(ops, func(a, b Finish) int { // newest first
		if c := b.At.Compare(a.At); c != 0 {
			return c
		}
		return cmp.Compare(b.Name, a.Name)
	})
	for i, o := range ops {
		if (max > 0 && i >= max) || (ttl > 0 && !now.Before(o.At.Add(ttl))) {
			remove = append(remove, o.Name)
		}
	}
	return remove
}

// Finish is a finished operation and when it finished.
type Finish struct {
	Name string
	At   time.Time
}
