package main

// result is one N's figures. Durations in seconds.
type result struct {
	N              int
	RestartRequest string // the operator's --restart-request
	Err            string `json:",omitempty"`
	CreateSeconds  float64
	ConvergeCreate float64
	// The same N VMs as kubevirt.io VMs created directly (what runpolicy applies), in the same run before the
	// operator started: created → KubeVirt reports each Running or Stopped (plain.go).
	PlainConvergeCreate float64
	ResyncRestart       float64 // plain operator restart → every VM reconciled once, nothing queued or in flight
	ResyncWrites        int     // the operator's writes in that window: an unchanged VM needs none
	ResyncWritesByKind  string  `json:",omitempty"`
	ConvergeRestart     float64 // operator restart with every VM's spec changed while it was down → all converged
	// The operator's writes until then: two per VM are needed (the KubeVirt VM and the VM's status).
	RestartWrites       int
	RestartWritesByKind string  `json:",omitempty"`
	OperatorReadyAfter  float64 // in that restart: operator process start → its first write (cache sync + first reconcile)
	Resets              int
	ResetsTimedOut      int
	ResetP50, ResetP99  float64 // reset → new VMI created
	ResetMax            float64
	RunningP50          float64 // reset → new VMI Running (seen by a watch)
	RunningP99          float64
	FinalToNewP50       float64 // VMI final (seen by a watch) → new VMI created: the operator's share plus KubeVirt's start
	FinalToNewP99       float64
	FinalToStartP50     float64 // VMI final → the operator's start call received by kube-apiserver (audit log)
	FinalToStartP99     float64
	StartToNewP50       float64 // start call → new VMI created (real virt-api + virt-controller)
	StartToNewP99       float64
	// The operator's part (VMI final → start call) split at its status write recording the intent (audit log):
	// until that write is received (watch, queue, reconcile), the write itself in kube-apiserver, and from its
	// response to the start call being received.
	FinalToIntentP50, FinalToIntentP99 float64
	IntentWriteP50, IntentWriteP99     float64
	IntentToStartP50, IntentToStartP99 float64
	// KubeVirt's own restart, the baseline: kubevirt.io VMs with runStrategy Always, reset in the same stream.
	KubeVirt           KubeVirtBaseline
	FloorP50, FloorP99 float64 // one write's round trip (a ConfigMap patch, the cheapest write)
	// One write of a runpolicy.io VirtualMachine: the kind of write the restart's intent is.
	VMFloorP50, VMFloorP99 float64
	ReconcileMean          float64 // operator's mean reconcile time during the reset stream (its own metric)
	// The operator's writes during the reset stream per runpolicy reset: all of them, those that are not Events
	// (VM status, KubeVirt calls), and Events (core or events.k8s.io), which only inform.
	WritesPerRestart      float64
	StateWritesPerRestart float64
	EventsPerRestart      float64
	WritesByKind          string
	FailedWrites          int
	FailedWritesBy        map[string]int `json:",omitempty"`
	OperatorPeakRSSMiB    float64
	// Peak RSS of each operator process: the one that saw the VMs created, the one restarted plainly, the one
	// restarted with every spec changed that also ran the reset stream.
	OperatorPeakRSSByRun map[string]float64 `json:",omitempty"`
	OperatorCPUSeconds   map[string]float64 // per phase
	ComponentCPUSeconds  map[string]cpuSnapshot
	APIServerTime        map[string]string // per phase: the request kinds kube-apiserver spent most time serving
	PhaseSeconds         map[string]float64
	// VMs not converged two minutes after the reset stream, with their policy and phase.
	NotConvergedAfterResets []string `json:",omitempty"`
}

// KubeVirtBaseline is the reset stream's figures for KubeVirt's own restart under runStrategy Always.
type KubeVirtBaseline struct {
	VMs                    int
	Resets, ResetsTimedOut int
	ResetP50, ResetP99     float64 // reset → new VMI created
	ResetMax               float64
	RunningP50, RunningP99 float64 // reset → new VMI Running
	FinalToNewP50          float64 // VMI final (seen by a watch) → new VMI created
	FinalToNewP99          float64
}

// ratio is a/b, 0 when either is missing.
func ratio(a, b float64) float64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	return a / b
}
