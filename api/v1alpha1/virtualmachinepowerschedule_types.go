package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// VirtualMachinePowerScheduleSpec says when to act on which VMs of the schedule's namespace.
// +kubebuilder:validation:XValidation:rule="has(self.vmSelector) != has(self.virtualMachineNames)",message="exactly one of spec.vmSelector and spec.virtualMachineNames names the VMs"
// +kubebuilder:validation:XValidation:rule="!(self.action in ['Start', 'Migrate', 'Evict'] && has(self.force) && self.force)",message="spec.force is not allowed with action Start, Migrate or Evict: force means grace period 0 and applies to Stop and Restart only"
type VirtualMachinePowerScheduleSpec struct {
	// schedule is a cron expression of five fields, minute hour day-of-month month day-of-week (e.g. "0 8 * * 1-5":
	// 08:00 Monday to Friday), in spec.timeZone; or @hourly, @daily (@midnight), @weekly, @monthly, @yearly
	// (@annually). Months and days of the week may be names (JAN, MON); day of week 0 is Sunday.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(?i)(([*]|[0-5]?[0-9](-[0-5]?[0-9])?)(/[0-9]+)?)(,([*]|[0-5]?[0-9](-[0-5]?[0-9])?)(/[0-9]+)?)* +(([*]|([01]?[0-9]|2[0-3])(-([01]?[0-9]|2[0-3]))?)(/[0-9]+)?)(,([*]|([01]?[0-9]|2[0-3])(-([01]?[0-9]|2[0-3]))?)(/[0-9]+)?)* +(([*]|[?]|(0?[1-9]|[12][0-9]|3[01])(-(0?[1-9]|[12][0-9]|3[01]))?)(/[0-9]+)?)(,([*]|[?]|(0?[1-9]|[12][0-9]|3[01])(-(0?[1-9]|[12][0-9]|3[01]))?)(/[0-9]+)?)* +(([*]|(0?[1-9]|1[0-2]|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)(-(0?[1-9]|1[0-2]|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec))?)(/[0-9]+)?)(,([*]|(0?[1-9]|1[0-2]|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)(-(0?[1-9]|1[0-2]|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec))?)(/[0-9]+)?)* +(([*]|[?]|([0-6]|sun|mon|tue|wed|thu|fri|sat)(-([0-6]|sun|mon|tue|wed|thu|fri|sat))?)(/[0-9]+)?)(,([*]|[?]|([0-6]|sun|mon|tue|wed|thu|fri|sat)(-([0-6]|sun|mon|tue|wed|thu|fri|sat))?)(/[0-9]+)?)*)$')",message="spec.schedule must be a cron expression of five fields, minute (0-59) hour (0-23) day-of-month (1-31) month (1-12 or JAN-DEC) day-of-week (0-6 or SUN-SAT), each *, a value, a range a-b, a step /n or a list of them, e.g. \"0 8 * * 1-5\"; or @hourly, @daily, @weekly, @monthly, @yearly (the time zone goes in spec.timeZone)"
	Schedule string `json:"schedule,omitempty"`

	// timeZone is the IANA time zone the schedule is read in (e.g. "Europe/Berlin"); default UTC. On a day the
	// clocks change, a time of day that does not exist is not run that day, and one that happens twice is run
	// once, at its first occurrence.
	// +optional
	// +kubebuilder:default=UTC
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self == 'UTC' || (self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$') && timestamp('2000-01-01T00:00:00Z').getHours(self) >= 0)",message="spec.timeZone must be an IANA time zone name, such as UTC, Europe/Berlin or America/New_York"
	TimeZone string `json:"timeZone,omitempty"`

	// action is what each run does to every VM it names: Start, Stop, Restart, Migrate or Evict, as a
	// VirtualMachineOperation.
	// +required
	Action VirtualMachineOperationType `json:"action,omitempty"`

	// force stops the guests at once (grace period 0) for Stop and Restart. Not allowed with Start, Migrate or Evict.
	// +optional
	Force bool `json:"force,omitempty"`

	// vmSelector selects the runpolicy VirtualMachines of this namespace each run acts on, by label. An empty
	// selector selects them all. Exactly one of vmSelector and virtualMachineNames is set.
	// +optional
	VMSelector *metav1.LabelSelector `json:"vmSelector,omitempty"`

	// virtualMachineNames are the runpolicy VirtualMachines of this namespace each run acts on; a name without a
	// VM is reported in the run's status.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=63
	VirtualMachineNames []string `json:"virtualMachineNames,omitempty"`

	// startingDeadlineSeconds says how late a run may be made: a run that could not be made at its time (the operator was down) is made late if it
	// is at most this many seconds late, else skipped and reported (status.lastSkippedTime, status.skippedRuns, a
	// Warning Event). Of several missed runs only the newest is made; the others are skipped. Default 300.
	// +optional
	// +kubebuilder:default=300
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=86400
	StartingDeadlineSeconds *int32 `json:"startingDeadlineSeconds,omitempty"`

	// suspend stops the runs until it is false again. Like any change of the spec, setting it back counts from
	// the change: runs that came due meanwhile are not made late.
	// +optional
	Suspend bool `json:"suspend,omitempty"`
}

// Condition types and reasons of a VirtualMachinePowerSchedule.
const (
	// ScheduleConditionReady is True while the schedule runs (Scheduled), False when suspended (Suspended) or
	// unreadable (InvalidSchedule).
	ScheduleConditionReady = "Ready"

	ScheduleReasonScheduled       = "Scheduled"
	ScheduleReasonSuspended       = "Suspended"
	ScheduleReasonInvalidSchedule = "InvalidSchedule"
)

// PowerScheduleRun is one run of a schedule.
type PowerScheduleRun struct {
	// scheduledTime is the time the run was due.
	// +required
	ScheduledTime *metav1.Time `json:"scheduledTime,omitempty"`

	// operations are the VirtualMachineOperations the run created, one per VM (at most the first 64 names).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=253
	Operations []string `json:"operations,omitempty"`

	// vms is how many VMs the run acted on.
	// +optional
	VMs int32 `json:"vms,omitempty"`

	// missingVirtualMachines are the names of spec.virtualMachineNames without a VM when the run was made.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=63
	MissingVirtualMachines []string `json:"missingVirtualMachines,omitempty"`

	// lateSeconds is how late the run was made (0 on time).
	// +optional
	LateSeconds int64 `json:"lateSeconds,omitempty"`
}

// VirtualMachinePowerScheduleStatus is the observed state of a VirtualMachinePowerSchedule.
type VirtualMachinePowerScheduleStatus struct {
	// conditions are Ready (True: the schedule runs; False: suspended, or its expression unreadable).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the generation this status was computed from.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// lastScheduleTime says every scheduled time up to this one has been dealt with (made or skipped), or came before
	// the last change of the spec.
	// +optional
	LastScheduleTime *metav1.Time `json:"lastScheduleTime,omitempty"`

	// nextScheduleTime is when the next run is due (none while suspended or unreadable).
	// +optional
	NextScheduleTime *metav1.Time `json:"nextScheduleTime,omitempty"`

	// lastRun is the newest run made.
	// +optional
	LastRun *PowerScheduleRun `json:"lastRun,omitempty"`

	// lastSkippedTime is the newest scheduled time skipped because it was missed by more than
	// spec.startingDeadlineSeconds.
	// +optional
	LastSkippedTime *metav1.Time `json:"lastSkippedTime,omitempty"`

	// skippedRuns counts the runs skipped so far (missed by more than spec.startingDeadlineSeconds, or older
	// missed runs of which only the newest was made).
	// +optional
	SkippedRuns int64 `json:"skippedRuns,omitempty"`
}

// VirtualMachinePowerSchedule starts, stops or restarts VMs on a cron schedule in a time zone. Each run creates one
// VirtualMachineOperation per VM, so every scheduled action leaves an audit object; the operations carry the labels
// runpolicy.io/reason=schedule and runpolicy.io/schedule=<name>.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vmsched,categories=runpolicy
// +kubebuilder:printcolumn:name="Schedule",type=string,JSONPath=`.spec.schedule`
// +kubebuilder:printcolumn:name="Time zone",type=string,JSONPath=`.spec.timeZone`
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`
// +kubebuilder:printcolumn:name="Next run",type=string,JSONPath=`.status.nextScheduleTime`
// +kubebuilder:printcolumn:name="Last run",type=date,JSONPath=`.status.lastRun.scheduledTime`
// +kubebuilder:printcolumn:name="Suspend",type=boolean,JSONPath=`.spec.suspend`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type VirtualMachinePowerSchedule struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec says when to act on which VMs.
	// +required
	Spec VirtualMachinePowerScheduleSpec `json:"spec,omitzero"`
	// status is where the schedule stands, written by the operator only.
	// +optional
	Status VirtualMachinePowerScheduleStatus `json:"status,omitzero"`
}

// VirtualMachinePowerScheduleList is a list of VirtualMachinePowerSchedules.
// +kubebuilder:object:root=true
type VirtualMachinePowerScheduleList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitzero"`
	Items           []VirtualMachinePowerSchedule `json:"items"`
}
