package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	kvv1 "kubevirt.io/api/core/v1"
)

// request is what the fake API server received.
type request struct {
	method, path, contentType string
	body                      []any
}

// serve answers every request with status and records it.
func serve(t *testing.T, status int) (*Client, *[]request) {
	t.Helper()
	var got []request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rq := request{method: r.Method, path: r.URL.Path, contentType: r.Header.Get("Content-Type")}
		if r.Method == http.MethodPatch {
			if err := json.Unmarshal(b, &rq.body); err != nil {
				t.Errorf("patch body %q: %v", b, err)
			}
		}
		got = append(got, rq)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if status >= 300 {
			_, _ = fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","code":%d}`, status)
			return
		}
		_, _ = io.WriteString(w, `{}`)
	}))
	t.Cleanup(srv.Close)
	c, err := NewClient(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return c, &got
}

// jsonOf is v as the generic JSON a decoded patch holds.
func jsonOf(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestReplaceWritesAStartThenDeletesTheEndedVMI(t *testing.T) {
	c, got := serve(t, http.StatusOK)
	if err := c.Replace(context.Background(), "ns", "vm", "vmi-1"); err != nil {
		t.Fatal(err)
	}
	if len(*got) != 2 {
		t.Fatalf("requests: %+v, want a patch and a deletion", *got)
	}
	p, d := (*got)[0], (*got)[1]
	if p.method != http.MethodPatch || p.path != "/apis/kubevirt.io/v1/namespaces/ns/virtualmachines/vm/status" ||
		p.contentType != string(types.JSONPatchType) {
		t.Errorf("first request %s %s (%s), want a JSON patch of the VM's status", p.method, p.path, p.contentType)
	}
	want := jsonOf(t, []op{
		{Op: "test", Path: requestsPath, Value: nil},
		{Op: "add", Path: requestsPath, Value: []kvv1.VirtualMachineStateChangeRequest{{Action: kvv1.StartRequest}}},
	})
	if b, w := jsonOf(t, p.body), want; !jsonEqual(b, w) {
		t.Errorf("patch %v, want %v", b, w)
	}
	if d.method != http.MethodDelete || d.path != "/apis/kubevirt.io/v1/namespaces/ns/virtualmachineinstances/vm" {
		t.Errorf("second request %s %s, want the VMI's deletion", d.method, d.path)
	}
}

func TestReplaceWhileKubeVirtHoldsARequest(t *testing.T) {
	c, got := serve(t, http.StatusUnprocessableEntity) // kube-apiserver's answer to a failed JSON patch test
	err := c.Replace(context.Background(), "ns", "vm", "vmi-1")
	if !errors.Is(err, ErrRequestPending) {
		t.Fatalf("Replace = %v, want ErrRequestPending", err)
	}
	if len(*got) != 1 {
		t.Errorf("requests: %+v, want the patch only: no deletion without the request", *got)
	}
}

func TestDeleteEndedAlreadyGoneOrReplaced(t *testing.T) {
	for _, status := range []int{http.StatusNotFound, http.StatusConflict} {
		c, _ := serve(t, status)
		if err := c.DeleteEnded(context.Background(), "ns", "vm", "vmi-1"); err != nil {
			t.Errorf("HTTP %d: DeleteEnded = %v, want nil", status, err)
		}
	}
	c, _ := serve(t, http.StatusForbidden)
	if err := c.DeleteEnded(context.Background(), "ns", "vm", "vmi-1"); err == nil {
		t.Error("HTTP 403: DeleteEnded = nil, want the error")
	}
}

func TestDropStarts(t *testing.T) {
	start := kvv1.VirtualMachineStateChangeRequest{Action: kvv1.StartRequest}
	other := types.UID("vmi-0")
	stopOther := kvv1.VirtualMachineStateChangeRequest{Action: kvv1.StopRequest, UID: &other}
	for _, c := range []struct {
		name    string
		current []kvv1.VirtualMachineStateChangeRequest
		want    []op
	}{
		{"a Start alone: the list is removed", []kvv1.VirtualMachineStateChangeRequest{start},
			[]op{{Op: "test", Path: requestsPath, Value: []kvv1.VirtualMachineStateChangeRequest{start}}, {Op: "remove", Path: requestsPath}}},
		{"a Stop is kept", []kvv1.VirtualMachineStateChangeRequest{stopOther, start},
			[]op{{Op: "test", Path: requestsPath, Value: []kvv1.VirtualMachineStateChangeRequest{stopOther, start}},
				{Op: "replace", Path: requestsPath, Value: []kvv1.VirtualMachineStateChangeRequest{stopOther}}}},
	} {
		cl, got := serve(t, http.StatusOK)
		if err := cl.DropStarts(context.Background(), "ns", "vm", c.current); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(*got) != 1 {
			t.Fatalf("%s: requests %+v, want one patch", c.name, *got)
		}
		if b, w := jsonOf(t, (*got)[0].body), jsonOf(t, c.want); !jsonEqual(b, w) {
			t.Errorf("%s: patch %v, want %v", c.name, b, w)
		}
	}
	cl, _ := serve(t, http.StatusUnprocessableEntity)
	if err := cl.DropStarts(context.Background(), "ns", "vm", []kvv1.VirtualMachineStateChangeRequest{start}); !errors.Is(err, ErrRequestPending) {
		t.Errorf("requests changed meanwhile: DropStarts = %v, want ErrRequestPending", err)
	}
}

// jsonEqual compares decoded JSON; a remove's value (null) is ignored by JSON patch and compared as sent.
func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
