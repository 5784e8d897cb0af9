package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// VirtualMachineOperationType is the action an operation performs.
// +kubebuilder:validation:Enum=Start;Stop;Restart;Migrate;Evict
type VirtualMachineOperationType string

const (
	OperationStart   VirtualMachineOperationType = "Start"
	OperationStop    VirtualMachineOperationType = "Stop"
	OperationRestart VirtualMachineOperationType = "Restart"
	// OperationMigrate live-migrates the running VMI to another node, through a KubeVirt
	// VirtualMachineInstanceMigration.
	OperationMigrate VirtualMachineOperationType = "Migrate"
	// OperationEvict moves the running VMI off its node: a live migration when KubeVirt can live-migrate it, else a
	// restart (a stop and a start, placed by the scheduler) where the run policy starts the VM again.
	OperationEvict VirtualMachineOperationType = "Evict"
)

// VirtualMachineOperationSpec names the VM and the action. It is immutable.
// +kubebuilder:validation:XValidation:rule="!(self.type in ['Start', 'Migrate', 'Evict'] && has(self.force) && self.force)",message="spec.force is not allowed with type Start, Migrate or Evict: force means grace period 0 and applies to Stop and Restart only"
// +kubebuilder:validation:XValidation:rule="!has(self.migration) || self.type in ['Migrate', 'Evict']",message="spec.migration is allowed with type Migrate or Evict only"
type VirtualMachineOperationSpec struct {
	// virtualMachineName is the runpolicy.io VirtualMachine, in the operation's namespace, to act on.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="spec.virtualMachineName must be the name of a VirtualMachine in this namespace: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit (a DNS-1123 subdomain)"
	VirtualMachineName string `json:"virtualMachineName,omitempty"`

	// type is the action: Start, Stop, Restart, Migrate (a live migration of the running VMI) or Evict (off its
	// node: a live migration, or a restart when the VMI is not live-migratable and the run policy starts it again).
	// +required
	Type VirtualMachineOperationType `json:"type,omitempty"`

	// force stops the guest at once (grace period 0) for Stop and Restart. Not allowed with Start, Migrate or Evict.
	// +optional
	Force bool `json:"force,omitempty"`

	// migration tunes the live migration of a Migrate or Evict operation.
	// +optional
	Migration *MigrationOptions `json:"migration,omitempty"`
}

// MigrationOptions tune the live migration of a Migrate or Evict operation.
type MigrationOptions struct {
	// nodeSelector restricts the target nodes further: KubeVirt's addedNodeSelector of the migration (the VM's own
	// node selector and affinity still apply).
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
}

// OperationMigration is where the KubeVirt migration of a Migrate operation stands.
type OperationMigration struct {
	// name is the VirtualMachineInstanceMigration's (the operation's name).
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name,omitempty"`
	// phase is the migration's phase, as KubeVirt reports it (Pending, Scheduling, Scheduled, PreparingTarget,
	// TargetReady, Running, Succeeded, Failed).
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Phase string `json:"phase,omitempty"`
	// sourceNode is the node the VMI ran on when the migration was created.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	SourceNode string `json:"sourceNode,omitempty"`
	// targetNode is the node KubeVirt migrates the VMI to, once known.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	TargetNode string `json:"targetNode,omitempty"`
}

// EvictionMethod is how an Evict operation moves the VM off its node.
// +kubebuilder:validation:Enum=LiveMigration;Restart
type EvictionMethod string

const (
	// EvictionLiveMigration: KubeVirt live-migrates the VMI (status.migration follows the migration).
	EvictionLiveMigration EvictionMethod = "LiveMigration"
	// EvictionRestart: the VMI is not live-migratable; it is restarted (a stop and a start), and the scheduler places
	// the new VMI.
	EvictionRestart EvictionMethod = "Restart"
)

// OperationEviction is how an Evict operation moves the VM off its node, chosen once, before anything is sent.
type OperationEviction struct {
	// method is LiveMigration or Restart.
	// +optional
	Method EvictionMethod `json:"method,omitempty"`
	// sourceNode is the node the VMI ran on when the method was chosen.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	SourceNode string `json:"sourceNode,omitempty"`
	// targetNode is the node the VM runs on once evicted.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	TargetNode string `json:"targetNode,omitempty"`
}

// VirtualMachineOperationPhase is where an operation stands.
// +kubebuilder:validation:Enum=Pending;InProgress;Completed;Failed
type VirtualMachineOperationPhase string

const (
	OperationPending    VirtualMachineOperationPhase = "Pending"
	OperationInProgress VirtualMachineOperationPhase = "InProgress"
	OperationCompleted  VirtualMachineOperationPhase = "Completed"
	OperationFailed     VirtualMachineOperationPhase = "Failed"
)

// Condition types of a VirtualMachineOperation.
const (
	// OperationConditionCompleted is True once KubeVirt reports the target state, False with a reason otherwise.
	OperationConditionCompleted = "Completed"
	// OperationConditionSignalSent is True once the request was accepted by KubeVirt's subresource API.
	OperationConditionSignalSent = "SignalSent"
)

// Condition reasons of a VirtualMachineOperation.
const (
	OperationReasonVirtualMachineNotFound = "VirtualMachineNotFound"
	// OperationReasonVirtualMachineNotManaged: a kubevirt.io VirtualMachine of that name exists that the runpolicy
	// VirtualMachine does not control (a name conflict); runpolicy never acts on it.
	OperationReasonVirtualMachineNotManaged  = "VirtualMachineNotManaged"
	OperationReasonNotApplicableForRunPolicy = "NotApplicableForRunPolicy"
	OperationReasonNotApplicableForVMPhase   = "NotApplicableForVMPhase"
	OperationReasonWaitingForOtherOperation  = "WaitingForOtherOperation"
	OperationReasonSuperseded                = "Superseded"
	// OperationReasonTimedOut: KubeVirt accepted the signal but did not reach the target state in time (--vmop-timeout).
	OperationReasonTimedOut   = "TimedOut"
	OperationReasonInProgress = "InProgress"
	OperationReasonCompleted  = "OperationCompleted"
	OperationReasonFailed     = "OperationFailed"
	// OperationReasonWaitingForVMPhase: the VM is in a passing phase (e.g. Stopping before a Start); the
	// operation runs once it settles.
	OperationReasonWaitingForVMPhase = "WaitingForVMPhase"
	// OperationReasonWaitingForStartSlot: a Start or Restart waits for one of the start slots the operator's
	// --max-concurrent-starts allows; the message gives its place and the VMs starting now.
	OperationReasonWaitingForStartSlot = "WaitingForStartSlot"
	// OperationReasonSignalPending: the operation is next and its signal is about to be sent (or being retried).
	OperationReasonSignalPending = "SignalPending"
	// OperationReasonSignalSentSuccess: KubeVirt accepted the start, stop or restart request.
	OperationReasonSignalSentSuccess = "SignalSentSuccess"
	// OperationReasonSignalSentError: KubeVirt refused the request or could not be reached.
	OperationReasonSignalSentError = "SignalSentError"
	// OperationReasonNotMigratable: KubeVirt's LiveMigratable condition of the VMI is not True; the message gives
	// KubeVirt's reason.
	OperationReasonNotMigratable = "NotMigratable"
	// OperationReasonMigrationFailed: KubeVirt's migration ended Failed (or was deleted); the message gives why.
	OperationReasonMigrationFailed = "MigrationFailed"
	// OperationReasonMigrationInProgress: a Migrate or Evict found the VMI migrating already, through a
	// VirtualMachineInstanceMigration someone else created (KubeVirt runs one migration of a VMI at a time).
	OperationReasonMigrationInProgress = "MigrationInProgress"
	// OperationReasonEvictedToSameNode: an Evict by restart completed, but the scheduler placed the new VMI on the
	// node it ran on (cordon the node to keep VMs off it).
	OperationReasonEvictedToSameNode = "EvictedToSameNode"
)

// VirtualMachineOperationStatus is the observed state of a VirtualMachineOperation.
type VirtualMachineOperationStatus struct {
	// conditions are Completed and SignalSent.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the generation this status was computed from.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// phase is Pending, InProgress, Completed or Failed.
	// +optional
	Phase VirtualMachineOperationPhase `json:"phase,omitempty"`

	// signalSentTime is when KubeVirt accepted the request.
	// +optional
	SignalSentTime *metav1.Time `json:"signalSentTime,omitempty"`

	// targetVMIUID is the UID of the VMI that existed when the signal was prepared (empty if none). It is
	// recorded before the signal is sent: a Stop or Restart acts on that VMI, a Start or Restart is complete
	// only with a different one, and a pass after a crash sees from it whether KubeVirt already took the signal.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	TargetVMIUID string `json:"targetVMIUID,omitempty"`

	// completionTime is when the operation reached Completed or Failed.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`

	// migration is where a Migrate or Evict operation's KubeVirt migration stands.
	// +optional
	Migration *OperationMigration `json:"migration,omitempty"`

	// eviction is how an Evict operation moves the VM off its node.
	// +optional
	Eviction *OperationEviction `json:"eviction,omitempty"`
}

// VirtualMachineOperation is a declarative, auditable Start, Stop, Restart, Migrate or Evict of a VirtualMachine.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vmop,categories=runpolicy
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.type`
// +kubebuilder:printcolumn:name="VM",type=string,JSONPath=`.spec.virtualMachineName`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Progress",type=string,JSONPath=`.status.migration.phase`
// +kubebuilder:printcolumn:name="Method",type=string,JSONPath=`.status.eviction.method`,priority=1
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.status.migration.targetNode`,priority=1
// +kubebuilder:printcolumn:name="Force",type=boolean,JSONPath=`.spec.force`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type VirtualMachineOperation struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec names the VM and the action; it is immutable.
	// +required
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec is immutable: create a new VirtualMachineOperation instead"
	Spec VirtualMachineOperationSpec `json:"spec,omitzero"`
	// status is where the operation stands, written by the operator only.
	// +optional
	Status VirtualMachineOperationStatus `json:"status,omitzero"`
}

// VirtualMachineOperationList is a list of VirtualMachineOperations.
// +kubebuilder:object:root=true
type VirtualMachineOperationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitzero"`
	Items           []VirtualMachineOperation `json:"items"`
}
