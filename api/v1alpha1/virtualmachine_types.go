package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kvv1 "kubevirt.io/api/core/v1"
)

// RunPolicy says when a VirtualMachine runs and what a guest reboot, a guest poweroff or a crash does to it.
// +kubebuilder:validation:Enum=AlwaysOff;AlwaysOn;Manual;AlwaysOnUntilStoppedManually
type RunPolicy string

const (
	// RunPolicyAlwaysOff keeps the VM stopped (KubeVirt runStrategy Halted).
	RunPolicyAlwaysOff RunPolicy = "AlwaysOff"
	// RunPolicyAlwaysOn keeps the VM running whatever happens (KubeVirt runStrategy Always).
	RunPolicyAlwaysOn RunPolicy = "AlwaysOn"
	// RunPolicyManual starts and stops the VM only on request; a guest reboot is a restart from outside.
	RunPolicyManual RunPolicy = "Manual"
	// RunPolicyAlwaysOnUntilStoppedManually runs the VM and restarts it after a reboot or a crash, but a guest
	// poweroff or a user's stop leaves it stopped.
	RunPolicyAlwaysOnUntilStoppedManually RunPolicy = "AlwaysOnUntilStoppedManually"
)

// VirtualMachineSpec is KubeVirt's VirtualMachineSpec with runPolicy in place of running and runStrategy.
// +kubebuilder:validation:XValidation:rule="!has(self.running)",message="spec.running is not supported: runpolicy.io VirtualMachines are started and stopped by spec.runPolicy (AlwaysOff, AlwaysOn, Manual, AlwaysOnUntilStoppedManually)"
// +kubebuilder:validation:XValidation:rule="!has(self.template) || !has(self.template.spec) || !has(self.template.spec.domain) || !has(self.template.spec.domain.rebootPolicy) || self.template.spec.domain.rebootPolicy != 'Reboot' || self.runPolicy == 'AlwaysOn' || self.runPolicy == 'AlwaysOff'",message="spec.template.spec.domain.rebootPolicy: Reboot keeps guest reboots inside the guest, which contradicts runPolicy Manual and AlwaysOnUntilStoppedManually (a guest reboot restarts the VM from outside with the current spec): remove it, or set Terminate"
// +kubebuilder:validation:XValidation:rule="!has(self.runStrategy)",message="spec.runStrategy is not supported: set spec.runPolicy (AlwaysOff, AlwaysOn, Manual, AlwaysOnUntilStoppedManually) instead; runpolicy derives the KubeVirt runStrategy from it"
type VirtualMachineSpec struct {
	// runPolicy decides when the VM runs: AlwaysOff, AlwaysOn, Manual or AlwaysOnUntilStoppedManually.
	// +optional
	// +kubebuilder:default=AlwaysOnUntilStoppedManually
	RunPolicy RunPolicy `json:"runPolicy,omitempty"`

	// disruptions says whether runpolicy may restart the running VM by itself to apply a changed spec, and when.
	// +optional
	Disruptions *Disruptions `json:"disruptions,omitempty"`

	// startOrder ranks the VM's starts while the operator caps how many VMs start at once (its
	// --max-concurrent-starts, the chart's maxConcurrentStarts): lower starts first, then the VM that has waited
	// longest. Without a cap it has no effect. Restarts after a guest reset or a failure go before every first start.
	// +optional
	// +kubebuilder:validation:Minimum=-1000000
	// +kubebuilder:validation:Maximum=1000000
	StartOrder int32 `json:"startOrder,omitempty"`

	// The KubeVirt VirtualMachine spec (template, dataVolumeTemplates, instancetype, preference, ...).
	// running and runStrategy are refused: runPolicy replaces them.
	kvv1.VirtualMachineSpec `json:",inline"`
}

// RestartApprovalMode says who approves the restart that applies a changed spec to a running VM.
// +kubebuilder:validation:Enum=Manual;Automatic
type RestartApprovalMode string

const (
	// RestartApprovalManual: the VM keeps running its old spec, with AwaitingRestartToApplyConfiguration=True,
	// until someone restarts it (a VirtualMachineOperation, virtctl) or its guest reboots.
	RestartApprovalManual RestartApprovalMode = "Manual"
	// RestartApprovalAutomatic: runpolicy restarts the VM itself, by creating a VirtualMachineOperation of type
	// Restart (labelled runpolicy.io/reason=apply-changes), inside the window if one is set.
	RestartApprovalAutomatic RestartApprovalMode = "Automatic"
)

// Disruptions is when runpolicy may restart a running VM to apply a changed spec.
// +kubebuilder:validation:XValidation:rule="!has(self.window) || self.restartApprovalMode == 'Automatic'",message="spec.disruptions.window limits automatic restarts: it needs spec.disruptions.restartApprovalMode Automatic"
type Disruptions struct {
	// restartApprovalMode is Manual (the default: the VM waits for a restart with AwaitingRestartToApplyConfiguration=True)
	// or Automatic (runpolicy restarts it through a VirtualMachineOperation of type Restart). A stopped VM needs no
	// restart: it starts with the current spec.
	// +optional
	// +kubebuilder:default=Manual
	RestartApprovalMode RestartApprovalMode `json:"restartApprovalMode,omitempty"`
	// window limits automatic restarts to a daily maintenance window; without one they happen at once.
	// +optional
	Window *DisruptionWindow `json:"window,omitempty"`
}

// Weekday is a day of the week.
// +kubebuilder:validation:Enum=Mon;Tue;Wed;Thu;Fri;Sat;Sun
type Weekday string

// DisruptionWindow is a maintenance window that opens at the same time of day, every day or on the days listed, in
// a time zone.
type DisruptionWindow struct {
	// start is when the window opens, "HH:MM" (24-hour clock) in timeZone.
	// +required
	// +kubebuilder:validation:MinLength=5
	// +kubebuilder:validation:MaxLength=5
	// +kubebuilder:validation:XValidation:rule="self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')",message="spec.disruptions.window.start must be a time of day as HH:MM, 00:00 to 23:59 (in spec.disruptions.window.timeZone)"
	Start string `json:"start,omitempty"`
	// duration is how long the window stays open, from 1m to 24h (e.g. "2h", "90m").
	// +required
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(h|m|s|ms))+$') && duration(self) >= duration('1m') && duration(self) <= duration('24h')",message="spec.disruptions.window.duration must be a duration between 1m and 24h, such as 2h or 90m"
	//nolint:kubeapilinter // nodurations: a window's length is written by people ("2h", "90m"), checked by CEL at admission; only runpolicy parses it
	Duration metav1.Duration `json:"duration"`
	// days are the days of the week the window opens on (Mon, Tue, Wed, Thu, Fri, Sat, Sun), in timeZone; empty
	// means every day. A window that runs past midnight goes on into the next day.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=7
	Days []Weekday `json:"days,omitempty"`
	// timeZone is the IANA time zone of start and days (e.g. "Europe/Berlin"); default UTC. The same names as a
	// VirtualMachinePowerSchedule's spec.timeZone.
	// +optional
	// +kubebuilder:default=UTC
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self == 'UTC' || (self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$') && timestamp('2000-01-01T00:00:00Z').getHours(self) >= 0)",message="spec.disruptions.window.timeZone must be an IANA time zone name, such as UTC, Europe/Berlin or America/New_York"
	TimeZone string `json:"timeZone,omitempty"`
}

// VirtualMachinePhase is the VM's power state, derived from KubeVirt's printableStatus.
// +kubebuilder:validation:Enum=Pending;Starting;Running;Stopping;Stopped;Terminating
type VirtualMachinePhase string

const (
	VirtualMachinePending     VirtualMachinePhase = "Pending"
	VirtualMachineStarting    VirtualMachinePhase = "Starting"
	VirtualMachineRunning     VirtualMachinePhase = "Running"
	VirtualMachineStopping    VirtualMachinePhase = "Stopping"
	VirtualMachineStopped     VirtualMachinePhase = "Stopped"
	VirtualMachineTerminating VirtualMachinePhase = "Terminating"
)

// Condition types of a VirtualMachine.
const (
	// ConditionReady is True while the VMI is running and ready.
	ConditionReady = "Ready"
	// ConditionAwaitingRestart is True while the running VMI was built from an older template than the current one.
	ConditionAwaitingRestart = "AwaitingRestartToApplyConfiguration"
	// ConditionSynced is True when the KubeVirt VirtualMachine matches this object's spec.
	ConditionSynced = "Synced"
	// ConditionRebootsApplyChanges is True when a reboot inside the guest restarts the VM from outside with its
	// current spec. False says why not (e.g. KubeVirt's Sidecar feature gate is off) and what to do; absent for
	// AlwaysOff.
	ConditionRebootsApplyChanges = "RebootsApplyChanges"
)

// Condition reasons of a VirtualMachine.
const (
	ReasonSynced       = "Synced"
	ReasonApplyFailed  = "ApplyFailed"
	ReasonNameConflict = "NameConflict"
	// ReasonRevertFailed: the KubeVirt VirtualMachine's spec was changed outside runpolicy and writing runpolicy's
	// back failed; its next start would boot the changed spec.
	ReasonRevertFailed        = "RevertFailed"
	ReasonRunning             = "Running"
	ReasonNotRunning          = "NotRunning"
	ReasonGuestNotReady       = "GuestNotReady"
	ReasonChangesPending      = "ChangesPendingRestart"
	ReasonNoRestartRequired   = "NoRestartRequired"
	ReasonKubeVirtRestartFlag = "KubeVirtRestartRequired"
	ReasonRestartBackoff      = "RestartBackoff"
	// ReasonRestarting: runpolicy asked KubeVirt for a new VMI after the previous one ended, and KubeVirt does not
	// report it running yet.
	ReasonRestarting = "Restarting"
	// ReasonWaitingForStartSlot: the VM is to start (a first start, or a restart after its VMI ended), and as many
	// VMs as the operator's start cap allows are starting already; status.startQueuePosition is its place.
	ReasonWaitingForStartSlot = "WaitingForStartSlot"
)

// ShutdownSource says what ended a VMI.
// +kubebuilder:validation:Enum=guest-reset;guest-shutdown;host-reset;crash;user;unknown
type ShutdownSource string

const (
	ShutdownGuestReset    ShutdownSource = "guest-reset"
	ShutdownGuestShutdown ShutdownSource = "guest-shutdown"
	// ShutdownHostReset: the VM was reset through KubeVirt (its reset subresource, virtctl reset), a reboot from
	// outside.
	ShutdownHostReset ShutdownSource = "host-reset"
	ShutdownCrash     ShutdownSource = "crash"
	ShutdownUser      ShutdownSource = "user"
	ShutdownUnknown   ShutdownSource = "unknown"
)

// ShutdownAction is what runpolicy did about an ended VMI.
// +kubebuilder:validation:Enum=Restarted;RestartAfterBackoff;StayedStopped;LeftToKubeVirt
type ShutdownAction string

const (
	// ShutdownRestarted: runpolicy had KubeVirt start a new VMI with the current spec.
	ShutdownRestarted ShutdownAction = "Restarted"
	// ShutdownRestartAfterBackoff: a restart waits until restartNotBefore (consecutive failures); the entry becomes
	// Restarted once it happened.
	ShutdownRestartAfterBackoff ShutdownAction = "RestartAfterBackoff"
	// ShutdownStayedStopped: the VM stays stopped, as its policy says.
	ShutdownStayedStopped ShutdownAction = "StayedStopped"
	// ShutdownLeftToKubeVirt: KubeVirt's own runStrategy acts (AlwaysOn: Always, AlwaysOff: Halted).
	ShutdownLeftToKubeVirt ShutdownAction = "LeftToKubeVirt"
)

// MaxShutdownHistory is how many ended VMIs status.shutdownHistory keeps.
const MaxShutdownHistory = 10

// Shutdown records how a VMI ended and what runpolicy did about it.
type Shutdown struct {
	// source is what ended the VMI: guest-reset, guest-shutdown, host-reset (virtctl reset), crash, user or unknown.
	// +required
	Source ShutdownSource `json:"source,omitempty"`
	// reason is the detail behind source: the QEMU SHUTDOWN reason from the hook sidecar, or why none was found.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Reason string `json:"reason,omitempty"`
	// time is when the VMI was seen to end.
	// +optional
	Time *metav1.Time `json:"time,omitempty"`
	// vmiUID is the UID of the VMI that ended.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	VMIUID string `json:"vmiUID,omitempty"`
	// action is what runpolicy did: Restarted, RestartAfterBackoff (until restartNotBefore), StayedStopped or
	// LeftToKubeVirt.
	// +optional
	Action ShutdownAction `json:"action,omitempty"`
	// restartNotBefore is when a RestartAfterBackoff restart is due.
	// +optional
	RestartNotBefore *metav1.Time `json:"restartNotBefore,omitempty"`
}

// VirtualMachineStatus is the observed state of a VirtualMachine.
type VirtualMachineStatus struct {
	// conditions are Ready, AwaitingRestartToApplyConfiguration, Synced and RebootsApplyChanges.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the generation of the spec this status was computed from.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// kubeVirtGeneration is the KubeVirt VirtualMachine's metadata.generation right after runpolicy last applied
	// it; a different generation means someone else changed its spec, and runpolicy applies again.
	// +optional
	KubeVirtGeneration int64 `json:"kubeVirtGeneration,omitempty"`

	// phase is the VM's power state.
	// +optional
	Phase VirtualMachinePhase `json:"phase,omitempty"`

	// printableStatus is the KubeVirt VirtualMachine's printableStatus, as KubeVirt reports it. While runpolicy
	// restarts the VM (phase Starting, Ready reason Restarting) it keeps the value it had when the restart began.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	PrintableStatus string `json:"printableStatus,omitempty"`

	// lastShutdown tells how the last VMI ended: always the first entry of shutdownHistory, kept for clients that
	// read only the last one.
	// +optional
	LastShutdown *Shutdown `json:"lastShutdown,omitempty"`

	// shutdownHistory lists the last ended VMIs (at most 10), newest first: what ended each, when, and what
	// runpolicy did about it.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=10
	ShutdownHistory []Shutdown `json:"shutdownHistory,omitempty"`

	// restartCount counts the restarts runpolicy made after a guest reset or a failure.
	// +optional
	RestartCount int32 `json:"restartCount,omitempty"`

	// handledVMIUID is the UID of the last ended VMI runpolicy acted on; a VMI is acted on once.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	HandledVMIUID string `json:"handledVMIUID,omitempty"`

	// restartingVMIUID is the UID of the ended VMI a restart was requested for and not yet seen through.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	RestartingVMIUID string `json:"restartingVMIUID,omitempty"`

	// failureCount counts consecutive failures that led to a restart; it drives the restart backoff.
	// +optional
	FailureCount int32 `json:"failureCount,omitempty"`

	// restartNotBefore is set while a restart after a failure waits out its backoff.
	// +optional
	RestartNotBefore *metav1.Time `json:"restartNotBefore,omitempty"`

	// nextAutomaticRestart is when the running VM will be restarted to apply its changed spec
	// (restartApprovalMode Automatic): the next opening of spec.disruptions.window.
	// +optional
	NextAutomaticRestart *metav1.Time `json:"nextAutomaticRestart,omitempty"`

	// automaticRestartOperation names the last VirtualMachineOperation runpolicy created to apply a changed spec.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	AutomaticRestartOperation string `json:"automaticRestartOperation,omitempty"`

	// startQueuePosition is the VM's place among the VMs waiting for a start slot (1 starts next), while it waits
	// (phase Pending, Ready reason WaitingForStartSlot); absent otherwise.
	// +optional
	StartQueuePosition int32 `json:"startQueuePosition,omitempty"`
}

// VirtualMachine is a KubeVirt virtual machine whose power state follows a runPolicy.
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 63",message="metadata.name must be at most 63 characters: KubeVirt puts the VM's name into the labels of its VMI and launcher pod, which are limited to 63"
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=rvm,categories=runpolicy
// +kubebuilder:printcolumn:name="Policy",type=string,JSONPath=`.spec.runPolicy`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Need Restart",type=string,JSONPath=`.status.conditions[?(@.type=="AwaitingRestartToApplyConfiguration")].status`
// +kubebuilder:printcolumn:name="Restarts",type=integer,JSONPath=`.status.restartCount`,priority=1
// +kubebuilder:printcolumn:name="Queue",type=integer,JSONPath=`.status.startQueuePosition`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type VirtualMachine struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec is the desired VM: its run policy and KubeVirt's VirtualMachineSpec.
	// +required
	//nolint:kubeapilinter // requiredfields: a value, as in KubeVirt's VirtualMachine; the schema requires spec.template, so an empty spec is refused
	Spec VirtualMachineSpec `json:"spec"`
	// status is the observed state, written by the operator only.
	// +optional
	Status VirtualMachineStatus `json:"status,omitzero"`
}

// VirtualMachineList is a list of VirtualMachines.
// +kubebuilder:object:root=true
type VirtualMachineList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitzero"`
	Items           []VirtualMachine `json:"items"`
}
