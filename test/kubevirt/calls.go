package kubevirt

import (
	"bufio"
	"encoding/json"
	"os"
	"time"
)

// Call is one request to virt-api's subresources.kubevirt.io (start, stop, restart, ...) as kube-apiserver's audit
// log records it (test/cluster's SubresourceAuditPolicy): who asked, for which VM, and virt-api's answer.
type Call struct {
	Namespace, Name string
	// Resource is virtualmachines or virtualmachineinstances.
	Resource string
	// Action is the subresource: start, stop, restart, ...
	Action string
	// User and Groups are the caller as kube-apiserver authenticated it.
	User   string
	Groups []string
	// Code is the HTTP status answered (202 Accepted when virt-api took the request).
	Code int
	// Message is kube-apiserver's message for a refusal it made itself (e.g. RBAC), else empty.
	Message string
	// Received is when kube-apiserver received the request.
	Received time.Time
}

// virtAPIUser is virt-api's service account.
const virtAPIUser = "system:serviceaccount:kubevirt:kubevirt-apiserver"

type auditEvent struct {
	Stage           string    `json:"stage"`
	RequestReceived time.Time `json:"requestReceivedTimestamp"`
	User            struct {
		Username string   `json:"username"`
		Groups   []string `json:"groups"`
	} `json:"user"`
	ImpersonatedUser *struct {
		Username string   `json:"username"`
		Groups   []string `json:"groups"`
	} `json:"impersonatedUser"`
	ObjectRef *struct {
		Resource, Namespace, Name, APIGroup, Subresource string
	} `json:"objectRef"`
	RequestObject  json.RawMessage `json:"requestObject"`
	ResponseStatus *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"responseStatus"`
}

// Calls lists every subresources.kubevirt.io request on a VM or VMI that kube-apiserver answered so far, oldest
// first (kube-apiserver writes an audit event once it answered: a call may show up a moment after its response).
func (n *Node) Calls() []Call {
	if n.opts.AuditLog == "" {
		return nil
	}
	calls, _ := ReadCalls(n.opts.AuditLog)
	return calls
}

// CallsFor lists the subresource calls on one VM (resource virtualmachines).
func (n *Node) CallsFor(namespace, vmName string) []Call {
	var out []Call
	for _, c := range n.Calls() {
		if c.Namespace == namespace && c.Name == vmName && c.Resource == "virtualmachines" {
			out = append(out, c)
		}
	}
	return out
}

// ReadCalls reads the subresources.kubevirt.io calls from an audit log.
func ReadCalls(path string) ([]Call, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var out []Call
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var ev auditEvent
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Stage != "ResponseComplete" || ev.ObjectRef == nil ||
			ev.ObjectRef.APIGroup != SubresourceGroup || ev.ObjectRef.Subresource == "" {
			continue
		}
		c := Call{Namespace: ev.ObjectRef.Namespace, Name: ev.ObjectRef.Name, Resource: ev.ObjectRef.Resource,
			Action: ev.ObjectRef.Subresource, User: ev.User.Username, Groups: ev.User.Groups, Received: ev.RequestReceived}
		if ev.ImpersonatedUser != nil {
			c.User, c.Groups = ev.ImpersonatedUser.Username, ev.ImpersonatedUser.Groups
		}
		if ev.ResponseStatus != nil {
			c.Code, c.Message = ev.ResponseStatus.Code, ev.ResponseStatus.Message
		}
		out = append(out, c)
	}
	return out, sc.Err()
}

// virtAPIPodDeletes lists the launcher pods (namespace/name) virt-api deleted with a grace period of at most 1 s:
// its forced restart (pkg/virt-api/rest/lifecycle.go RestartVMRequestHandler, gracePeriodSeconds 0).
func virtAPIPodDeletes(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var ev auditEvent
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Stage != "ResponseComplete" || ev.ObjectRef == nil ||
			ev.ObjectRef.Resource != "pods" || ev.User.Username != virtAPIUser || len(ev.RequestObject) == 0 {
			continue
		}
		var opts struct {
			GracePeriodSeconds *int64 `json:"gracePeriodSeconds"`
		}
		if json.Unmarshal(ev.RequestObject, &opts) == nil && opts.GracePeriodSeconds != nil && *opts.GracePeriodSeconds <= 1 {
			out[ev.ObjectRef.Namespace+"/"+ev.ObjectRef.Name] = true
		}
	}
	return out, sc.Err()
}
