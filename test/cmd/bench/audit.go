package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// auditPolicy records every write at Metadata level (who, what, when), nothing else; the subresources.kubevirt.io
// calls (start, stop, ...) are writes too, so the node layer counts them from the same log.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`

// restartCalls lists, per VM name, what one client (user agent prefix) did in kube-apiserver that a restart is
// made of: its start requests (KubeVirt's start subresource, or its Start request patched into the kubevirt.io
// VirtualMachine's status: --restart-request) and its runpolicy.io VirtualMachine status writes, in the order received.
func restartCalls(path, uaPrefix string) (map[string]*vmCalls, error) {
	out := map[string]*vmCalls{}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var ev auditEvent
		if json.Unmarshal(sc.Bytes(), &ev) != nil || !strings.HasPrefix(ev.UserAgent, uaPrefix) {
			continue
		}
		c := out[ev.ObjectRef.Name]
		if c == nil {
			c = &vmCalls{}
			out[ev.ObjectRef.Name] = c
		}
		call := apiCall{Received: ev.RequestReceived, Done: ev.StageTimestamp}
		switch {
		case ev.ObjectRef.Subresource == "start",
			ev.ObjectRef.APIGroup == "kubevirt.io" && ev.ObjectRef.Resource == "virtualmachines" && ev.ObjectRef.Subresource == "status":
			c.Starts = append(c.Starts, call)
		case ev.ObjectRef.APIGroup == "runpolicy.io" && ev.ObjectRef.Resource == "virtualmachines" && ev.ObjectRef.Subresource == "status":
			c.StatusWrites = append(c.StatusWrites, call)
		}
	}
	return out, sc.Err()
}

// apiCall is one request as kube-apiserver's audit log has it: received, and its response completed.
type apiCall struct{ Received, Done time.Time }

type vmCalls struct{ Starts, StatusWrites []apiCall }

// startAfter is the first start call received in [from, to].
func (c *vmCalls) startAfter(from, to time.Time) (apiCall, bool) {
	for _, s := range c.Starts {
		if !s.Received.Before(from) && !s.Received.After(to) {
			return s, true
		}
	}
	return apiCall{}, false
}

// intentBefore is the last status write received in [from, start): the one recording the restart's intent.
func (c *vmCalls) intentBefore(from, start time.Time) (apiCall, bool) {
	var w apiCall
	found := false
	for _, s := range c.StatusWrites {
		if !s.Received.Before(from) && s.Received.Before(start) {
			w, found = s, true
		}
	}
	return w, found
}

type auditEvent struct {
	Verb      string `json:"verb"`
	UserAgent string `json:"userAgent"`
	ObjectRef struct {
		Resource    string `json:"resource"`
		Name        string `json:"name"`
		Subresource string `json:"subresource"`
		APIGroup    string `json:"apiGroup"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	RequestReceived time.Time `json:"requestReceivedTimestamp"`
	StageTimestamp  time.Time `json:"stageTimestamp"`
}

// writeCounts counts the writes of one client (user agent prefix) received in [from, to), by
// verb resource[/subresource], and the total.
type writeCounts struct {
	Total    int
	Events   int // writes of Events (core or events.k8s.io), part of Total
	Failed   int // answered with a code ≥ 400 (conflicts, not found)
	By       map[string]int
	FailedBy map[string]int // "verb resource code"
}

func (w writeCounts) String() string {
	keys := make([]string, 0, len(w.By))
	for k := range w.By {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return w.By[keys[i]] > w.By[keys[j]] || w.By[keys[i]] == w.By[keys[j]] && keys[i] < keys[j]
	})
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, w.By[k]))
	}
	return strings.Join(parts, " ")
}

// countWrites reads the audit log.
//
//nolint:unparam // uaPrefix selects the client, as in restartCalls: the bench counts only the operator's.
func countWrites(path, uaPrefix string, from, to time.Time) (writeCounts, error) {
	res := writeCounts{By: map[string]int{}, FailedBy: map[string]int{}}
	f, err := os.Open(path)
	if err != nil {
		return res, err
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var ev auditEvent
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		if !strings.HasPrefix(ev.UserAgent, uaPrefix) || ev.RequestReceived.Before(from) || !ev.RequestReceived.Before(to) {
			continue
		}
		key := ev.Verb + " " + ev.ObjectRef.Resource
		if ev.ObjectRef.APIGroup != "" {
			key += "." + ev.ObjectRef.APIGroup
		}
		if ev.ObjectRef.Subresource != "" {
			key += "/" + ev.ObjectRef.Subresource
		}
		res.By[key]++
		res.Total++
		if ev.ObjectRef.Resource == "events" {
			res.Events++
		}
		if ev.ResponseStatus.Code >= 400 {
			res.Failed++
			res.FailedBy[fmt.Sprintf("%s %d", key, ev.ResponseStatus.Code)]++
		}
	}
	return res, sc.Err()
}
