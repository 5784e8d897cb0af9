// Package shutdown defines the termination message the hook sidecar writes when QEMU exits and the parser the
// operator uses to read it back from the launcher pod's container status.
//
// The message is a sequence of JSON lines, one per QEMU SHUTDOWN event, oldest first:
//
//	{"event":"SHUTDOWN","guest":true,"reason":"guest-reset","time":"2026-11-25T15:41:33.123456Z"}
//	{"event":"SHUTDOWN","guest":false,"reason":"host-signal","time":"2026-11-25T15:41:33.130000Z"}
//
// libvirt runs QEMU with -no-shutdown and kills it right after a guest-initiated SHUTDOWN, so a host-signal
// event usually follows the guest's one; the guest event is what tells why the VM ended.
package shutdown

import (
	"bufio"
	"encoding/json"
	"strings"
	"time"
)

// EventShutdown is the QMP event name the sidecar records.
const EventShutdown = "SHUTDOWN"

// MaxMessageBytes is the kubelet's limit for a container termination message.
const MaxMessageBytes = 4096

// QEMU SHUTDOWN reasons (qapi/run-state.json ShutdownCause) that matter here.
const (
	QEMUGuestReset    = "guest-reset"
	QEMUGuestShutdown = "guest-shutdown"
	QEMUGuestPanic    = "guest-panic"
	// QEMUHostReset is QMP system_reset (libvirt's virDomainReset, KubeVirt's reset subresource, virtctl reset)
	// while the reboot action is shutdown (on_reboot=destroy): QEMU ends with this reason instead of resetting.
	QEMUHostReset = "host-qmp-system-reset"
)

// Event is one line of the termination message.
type Event struct {
	Event  string    `json:"event"`
	Guest  bool      `json:"guest"`
	Reason string    `json:"reason"`
	Time   time.Time `json:"time,omitzero"`
}

// Line encodes the event as one JSON line, newline included.
func (e Event) Line() []byte {
	b, _ := json.Marshal(e) // a struct of strings, a bool and a time cannot fail to encode
	return append(b, '\n')
}

// Cause is what the operator concludes from a termination message.
type Cause string

const (
	// CauseGuestReset: the guest rebooted itself (QEMU reset turned into an exit).
	CauseGuestReset Cause = "GuestReset"
	// CauseGuestShutdown: the guest powered itself off.
	CauseGuestShutdown Cause = "GuestShutdown"
	// CauseGuestPanic: the guest kernel panicked (pvpanic); treated as a crash.
	CauseGuestPanic Cause = "GuestPanic"
	// CauseHostReset: QEMU was reset from outside, e.g. KubeVirt's reset subresource / virtctl reset: a reboot
	// asked from outside.
	CauseHostReset Cause = "HostReset"
	// CauseHost: QEMU was stopped from outside (signal, QMP quit, host error) with no guest event before.
	CauseHost Cause = "Host"
	// CauseUnknown: no usable event (no message, sidecar missing, garbage).
	CauseUnknown Cause = "Unknown"
)

// Result is the parsed termination message.
type Result struct {
	Cause Cause
	// Event is the event the cause was derived from; zero for CauseUnknown.
	Event Event
	// Events holds every well-formed SHUTDOWN event, in order.
	Events []Event
}

// Parse reads every JSON line of msg. The first guest-initiated SHUTDOWN decides the cause; host events count
// only when no guest event is present, and then the first one decides: host-qmp-system-reset is CauseHostReset,
// any other host-* reason CauseHost. Lines that are not SHUTDOWN events are ignored, never guessed at.
func Parse(msg string) Result {
	var res Result
	sc := bufio.NewScanner(strings.NewReader(msg))
	sc.Buffer(make([]byte, 0, 1024), MaxMessageBytes*4)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] != '{' {
			continue
		}
		var ev Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Event != EventShutdown || ev.Reason == "" {
			continue
		}
		res.Events = append(res.Events, ev)
	}
	res.Cause = CauseUnknown
	for _, ev := range res.Events {
		if !ev.Guest {
			continue
		}
		switch ev.Reason {
		case QEMUGuestReset:
			res.Cause, res.Event = CauseGuestReset, ev
		case QEMUGuestShutdown:
			res.Cause, res.Event = CauseGuestShutdown, ev
		case QEMUGuestPanic:
			res.Cause, res.Event = CauseGuestPanic, ev
		default:
			continue
		}
		return res
	}
	for _, ev := range res.Events {
		switch {
		case ev.Reason == QEMUHostReset:
			res.Cause, res.Event = CauseHostReset, ev
		case strings.HasPrefix(ev.Reason, "host-"):
			res.Cause, res.Event = CauseHost, ev
		default:
			continue
		}
		return res
	}
	return res
}
