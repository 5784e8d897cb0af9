package kubevirt

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	virtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// SubresourceGroupVersion is virt-api's aggregated API.
const (
	SubresourceGroup   = "subresources.kubevirt.io"
	SubresourceVersion = "v1"
	serviceName        = "virt-api"

	vmNotRunning     = "VM is not running"
	jsonpatchTestErr = "jsonpatch test operation does not apply"
)

// serverTLS makes a serving certificate for virt-api.<ns>.svc (the ServerName kube-aggregator verifies, see
// kube-aggregator pkg/controllers/status/remote BuildTransportConfig) and a TLS config that asks for the
// front-proxy client certificate.
func (s *StandIn) serverTLS() ([]byte, *tls.Config, error) {
	clientCAs, err := frontProxyCAPool(s.opts.CertDir)
	if err != nil {
		return nil, nil, err
	}
	ca, err := newCA("runpolicy-test-virt-api-ca")
	if err != nil {
		return nil, nil, err
	}
	host := serviceName + "." + s.opts.Namespace + ".svc"
	serving, err := ca.issue(host, []string{host, "localhost"}, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, nil, err
	}
	cert, err := serving.tlsCertificate()
	if err != nil {
		return nil, nil, err
	}
	return ca.certPEM, &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    clientCAs,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// handler authenticates kube-apiserver the way an aggregated apiserver's requestheader authenticator does: a
// client certificate verified against the front-proxy CA with an allowed CN, then X-Remote-User/X-Remote-Group.
func (s *StandIn) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != FrontProxyClientName {
			writeStatus(w, apierrors.NewUnauthorized("the request did not come from kube-apiserver's front proxy"))
			return
		}
		user, groups := r.Header.Get("X-Remote-User"), r.Header.Values("X-Remote-Group")
		if user == "" {
			writeStatus(w, apierrors.NewUnauthorized("no X-Remote-User header"))
			return
		}
		path := strings.TrimSuffix(r.URL.Path, "/")
		switch {
		case r.Method == http.MethodGet && path == "/apis":
			writeJSON(w, http.StatusOK, &metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"},
				Groups: []metav1.APIGroup{apiGroup()}})
		case r.Method == http.MethodGet && path == "/apis/"+SubresourceGroup:
			g := apiGroup()
			g.TypeMeta = metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"}
			writeJSON(w, http.StatusOK, &g)
		case r.Method == http.MethodGet && path == "/apis/"+SubresourceGroup+"/"+SubresourceVersion:
			writeJSON(w, http.StatusOK, apiResourceList())
		case r.Method == http.MethodGet && (path == "/healthz" || path == "/readyz"):
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte("ok"))
		default:
			// /apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/{action}
			parts := strings.Split(strings.TrimPrefix(path, "/apis/"+SubresourceGroup+"/"+SubresourceVersion+"/"), "/")
			if len(parts) != 5 || parts[0] != "namespaces" || parts[2] != "virtualmachines" || !strings.HasPrefix(path, "/apis/"+SubresourceGroup+"/") {
				writeStatus(w, apierrors.NewNotFound(virtv1.Resource("virtualmachine"), path))
				return
			}
			if r.Method != http.MethodPut {
				writeStatus(w, apierrors.NewMethodNotSupported(virtv1.Resource("virtualmachines/"+parts[4]), r.Method))
				return
			}
			body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			call := Call{Namespace: parts[1], Name: parts[3], Action: parts[4], User: user, Groups: groups, Body: body}
			var err error
			switch parts[4] {
			case "start":
				err = s.startVM(r.Context(), call.Namespace, call.Name, body)
			case "stop":
				err = s.stopVM(r.Context(), call.Namespace, call.Name, body)
			case "restart":
				err = s.restartVM(r.Context(), call.Namespace, call.Name, body)
			default:
				err = apierrors.NewNotFound(virtv1.Resource("virtualmachines/"+parts[4]), call.Name)
			}
			call.Code = http.StatusAccepted
			if err != nil {
				status := toStatusError(err)
				call.Code, call.Message = int(status.ErrStatus.Code), status.ErrStatus.Message
				s.recordCall(call)
				writeStatus(w, status)
				return
			}
			s.recordCall(call)
			w.WriteHeader(http.StatusAccepted)
		}
	})
}

func apiGroup() metav1.APIGroup {
	gv := metav1.GroupVersionForDiscovery{GroupVersion: SubresourceGroup + "/" + SubresourceVersion, Version: SubresourceVersion}
	return metav1.APIGroup{Name: SubresourceGroup, Versions: []metav1.GroupVersionForDiscovery{gv}, PreferredVersion: gv}
}

// apiResourceList is the part of virt-api's discovery document (pkg/virt-api/api.go) the stand-in serves.
func apiResourceList() *metav1.APIResourceList {
	list := &metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
		GroupVersion: SubresourceGroup + "/" + SubresourceVersion}
	for _, name := range []string{"virtualmachines/start", "virtualmachines/stop", "virtualmachines/restart"} {
		list.APIResources = append(list.APIResources, metav1.APIResource{Name: name, Namespaced: true, Kind: "VirtualMachine", Verbs: metav1.Verbs{"update"}})
	}
	return list
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeStatus(w http.ResponseWriter, err *apierrors.StatusError) {
	st := err.ErrStatus
	st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	writeJSON(w, int(st.Code), &st)
}

func toStatusError(err error) *apierrors.StatusError {
	var se *apierrors.StatusError
	if errors.As(err, &se) {
		return se
	}
	return apierrors.NewInternalError(err)
}

// decodeBody is virt-api's decodeBody: an empty body means defaults, anything else must be the options JSON.
func decodeBody(body []byte, into any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, into); err != nil {
		return apierrors.NewBadRequest(fmt.Sprintf("Can not unmarshal Request body to struct, error: %s", err))
	}
	return nil
}

func (s *StandIn) fetchVM(ctx context.Context, ns, name string) (*virtv1.VirtualMachine, error) {
	vm := &virtv1.VirtualMachine{}
	if err := s.client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, vm); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, apierrors.NewNotFound(virtv1.Resource("virtualmachine"), name)
		}
		return nil, apierrors.NewInternalError(fmt.Errorf("unable to retrieve vm [%s]: %v", name, err))
	}
	return vm, nil
}

func conflict(name string, format string, args ...any) error {
	return apierrors.NewConflict(virtv1.Resource("virtualmachine"), name, fmt.Errorf(format, args...))
}

func dryRun(d []string) []client.PatchOption {
	if len(d) > 0 {
		return []client.PatchOption{client.DryRunAll}
	}
	return nil
}

// patchErr is how lifecycle.go reports a failed patch: a failed JSON patch test is a Conflict, the rest 500.
func patchErr(name string, err error) error {
	if err == nil {
		return nil
	}
	if strings.Contains(err.Error(), jsonpatchTestErr) {
		return apierrors.NewConflict(virtv1.Resource("virtualmachine"), name, err)
	}
	return apierrors.NewInternalError(err)
}

// startVM is lifecycle.go StartVMRequestHandler.
func (s *StandIn) startVM(ctx context.Context, ns, name string, body []byte) error {
	vm, err := s.fetchVM(ctx, ns, name)
	if err != nil {
		return err
	}
	vmi, err := s.getVMI(ctx, ns, name)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	if vmi != nil && !vmi.IsFinal() && vmi.Status.Phase != virtv1.Unknown && vmi.Status.Phase != virtv1.VmPhaseUnset {
		return conflict(name, "VM is already running")
	}
	opts := &virtv1.StartOptions{}
	if err := decodeBody(body, opts); err != nil {
		return err
	}
	data := map[string]string{}
	if opts.Paused {
		data[virtv1.StartRequestDataPausedKey] = virtv1.StartRequestDataPausedTrue
	}
	rs, err := vm.RunStrategy()
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	switch rs {
	case virtv1.RunStrategyHalted:
		paused := virtv1.StartStrategyPaused
		if opts.Paused && (vm.Spec.Template == nil || vm.Spec.Template.Spec.StartStrategy != &paused) {
			// virt-controller turns a start request on a Halted VM into runStrategy Always
			return patchErr(name, s.patchStatusJSON(ctx, vm, opts.DryRun, virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StartRequest, Data: data}))
		}
		return patchErr(name, s.patchRunStrategy(ctx, vm, virtv1.RunStrategyAlways, opts.DryRun))
	case virtv1.RunStrategyRerunOnFailure, virtv1.RunStrategyManual:
		needsRestart := false
		if (rs == virtv1.RunStrategyRerunOnFailure && vmi != nil && vmi.Status.Phase == virtv1.Succeeded) ||
			(rs == virtv1.RunStrategyManual && vmi != nil && vmi.IsFinal()) {
			needsRestart = true
		} else if rs == virtv1.RunStrategyRerunOnFailure && vmi != nil && vmi.Status.Phase == virtv1.Failed {
			return conflict(name, "%v does not support starting VM from failed state", virtv1.RunStrategyRerunOnFailure)
		}
		start := virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StartRequest, Data: data}
		if needsRestart {
			uid := vmi.UID
			return patchErr(name, s.patchStatusJSON(ctx, vm, opts.DryRun, virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StopRequest, UID: &uid}, start))
		}
		return patchErr(name, s.patchStatusJSON(ctx, vm, opts.DryRun, start))
	case virtv1.RunStrategyAlways, virtv1.RunStrategyOnce:
		return conflict(name, "%v does not support manual start requests", rs)
	}
	return nil
}

// stopVM is lifecycle.go StopVMRequestHandler.
func (s *StandIn) stopVM(ctx context.Context, ns, name string, body []byte) error {
	opts := &virtv1.StopOptions{}
	if err := decodeBody(body, opts); err != nil {
		return err
	}
	vm, err := s.fetchVM(ctx, ns, name)
	if err != nil {
		return err
	}
	rs, err := vm.RunStrategy()
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	vmi, err := s.getVMI(ctx, ns, name)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	hasVMI := vmi != nil
	var oldGrace int64
	if hasVMI && !vmi.IsFinal() && opts.GracePeriod != nil {
		// a shorter grace period goes onto the VMI first; virt-handler honours it when the VMI is deleted
		var old any
		if vmi.Spec.TerminationGracePeriodSeconds != nil {
			oldGrace = *vmi.Spec.TerminationGracePeriodSeconds
			old = oldGrace
		}
		patch, _ := json.Marshal([]map[string]any{
			{"op": "test", "path": "/spec/terminationGracePeriodSeconds", "value": old},
			{"op": "replace", "path": "/spec/terminationGracePeriodSeconds", "value": *opts.GracePeriod},
		})
		if err := s.client.Patch(ctx, vmi.DeepCopy(), client.RawPatch(types.JSONPatchType, patch), dryRun(opts.DryRun)...); err != nil {
			return apierrors.NewInternalError(err)
		}
	}
	switch rs {
	case virtv1.RunStrategyHalted:
		if !hasVMI || vmi.IsFinal() {
			return conflict(name, vmNotRunning)
		}
		if opts.GracePeriod == nil || (vmi.Spec.TerminationGracePeriodSeconds != nil && *opts.GracePeriod >= oldGrace) {
			return conflict(name, "%v only supports manual stop requests with a shorter graceperiod", virtv1.RunStrategyHalted)
		}
		uid := vmi.UID
		return patchErr(name, s.patchStatusJSON(ctx, vm, opts.DryRun, virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StopRequest, UID: &uid}))
	case virtv1.RunStrategyRerunOnFailure, virtv1.RunStrategyManual:
		if !hasVMI || vmi.IsFinal() {
			return conflict(name, vmNotRunning)
		}
		// pass the buck to virt-controller so the VM keeps its runStrategy
		uid := vmi.UID
		return patchErr(name, s.patchStatusJSON(ctx, vm, opts.DryRun, virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StopRequest, UID: &uid}))
	case virtv1.RunStrategyAlways, virtv1.RunStrategyOnce:
		return patchErr(name, s.patchRunStrategy(ctx, vm, virtv1.RunStrategyHalted, opts.DryRun))
	}
	return nil
}

// restartVM is lifecycle.go RestartVMRequestHandler.
func (s *StandIn) restartVM(ctx context.Context, ns, name string, body []byte) error {
	opts := &virtv1.RestartOptions{}
	if err := decodeBody(body, opts); err != nil {
		return err
	}
	if opts.GracePeriodSeconds != nil {
		if *opts.GracePeriodSeconds > 0 {
			return apierrors.NewBadRequest("For force restart, only gracePeriod=0 is supported for now")
		} else if *opts.GracePeriodSeconds < 0 {
			return apierrors.NewBadRequest("gracePeriod has to be greater or equal to 0")
		}
	}
	vm, err := s.fetchVM(ctx, ns, name)
	if err != nil {
		return err
	}
	rs, err := vm.RunStrategy()
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	if rs == virtv1.RunStrategyHalted || rs == virtv1.RunStrategyOnce {
		return conflict(name, "RunStategy %v does not support manual restart requests", rs)
	}
	vmi, err := s.getVMI(ctx, ns, name)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	if vmi == nil {
		return conflict(name, "VM is not running: %v", virtv1.RunStrategyHalted)
	}
	uid := vmi.UID
	if err := s.patchStatusJSON(ctx, vm, opts.DryRun,
		virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StopRequest, UID: &uid},
		virtv1.VirtualMachineStateChangeRequest{Action: virtv1.StartRequest}); err != nil {
		return patchErr(name, err)
	}
	if opts.GracePeriodSeconds != nil && *opts.GracePeriodSeconds == 0 && len(opts.DryRun) == 0 {
		// CRDs have no graceful delete options: delete the running launcher pod with grace 1 for a swift restart
		pods, err := s.launcherPods(ctx, vmi)
		if err != nil {
			return apierrors.NewInternalError(err)
		}
		for i := range pods {
			if pods[i].Status.Phase != corev1.PodRunning {
				continue
			}
			if err := s.client.Delete(ctx, &pods[i], client.GracePeriodSeconds(1)); err != nil && !apierrors.IsNotFound(err) {
				return apierrors.NewInternalError(err)
			}
			break
		}
	}
	return nil
}

// patchStatusJSON is lifecycle.go getChangeRequestJson + PatchStatus: add the requests after a test of the
// current list; a single Stop replaces a pending list; anything else while requests are pending is refused.
func (s *StandIn) patchStatusJSON(ctx context.Context, vm *virtv1.VirtualMachine, dry []string, changes ...virtv1.VirtualMachineStateChangeRequest) error {
	var ops []map[string]any
	if equality.Semantic.DeepEqual(vm.Status, virtv1.VirtualMachineStatus{}) {
		ops = append(ops, map[string]any{"op": "add", "path": "/status", "value": virtv1.VirtualMachineStatus{StateChangeRequests: changes}})
	} else {
		var current any
		if vm.Status.StateChangeRequests != nil {
			current = vm.Status.StateChangeRequests
		}
		ops = append(ops, map[string]any{"op": "test", "path": "/status/stateChangeRequests", "value": current})
		switch {
		case len(vm.Status.StateChangeRequests) == 0:
			ops = append(ops, map[string]any{"op": "add", "path": "/status/stateChangeRequests", "value": changes})
		case len(changes) == 1 && changes[0].Action == virtv1.StopRequest:
			ops = append(ops, map[string]any{"op": "replace", "path": "/status/stateChangeRequests", "value": changes})
		default:
			return fmt.Errorf("unable to complete request: stop/start already underway")
		}
	}
	if vm.Status.StartFailure != nil {
		ops = append(ops, map[string]any{"op": "remove", "path": "/status/startFailure"})
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	return s.client.Status().Patch(ctx, vm.DeepCopy(), client.RawPatch(types.JSONPatchType, patch), toSubResourcePatch(dry)...)
}

func toSubResourcePatch(dry []string) []client.SubResourcePatchOption {
	if len(dry) > 0 {
		return []client.SubResourcePatchOption{client.DryRunAll}
	}
	return nil
}

// patchRunStrategy is lifecycle.go getRunningPatch: Always for start, Halted for stop, guarded by a test op
// (spec.running when the VM still uses it).
func (s *StandIn) patchRunStrategy(ctx context.Context, vm *virtv1.VirtualMachine, rs virtv1.VirtualMachineRunStrategy, dry []string) error {
	var ops []map[string]any
	if vm.Spec.RunStrategy != nil {
		ops = []map[string]any{{"op": "test", "path": "/spec/runStrategy", "value": *vm.Spec.RunStrategy},
			{"op": "replace", "path": "/spec/runStrategy", "value": rs}}
	} else {
		ops = []map[string]any{{"op": "test", "path": "/spec/running", "value": vm.Spec.Running},
			{"op": "replace", "path": "/spec/running", "value": rs == virtv1.RunStrategyAlways}}
	}
	patch, _ := json.Marshal(ops)
	return s.client.Patch(ctx, vm.DeepCopy(), client.RawPatch(types.JSONPatchType, patch), dryRun(dry)...)
}
