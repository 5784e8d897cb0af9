package controllers

import (
	"context"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

// The operator calls itself guarded only when a policy labelled as the launcher-pod guard is installed with a
// binding that denies: a policy alone, a binding of another policy or one that only warns guards nothing.
func TestLauncherPodGuarded(t *testing.T) {
	guardLabels := map[string]string{LabelGuard: GuardLauncherPods}
	policy := func(name string, labels map[string]string) *admissionv1.ValidatingAdmissionPolicy {
		return &admissionv1.ValidatingAdmissionPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	}
	binding := func(policy string, actions ...admissionv1.ValidationAction) *admissionv1.ValidatingAdmissionPolicyBinding {
		return &admissionv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: policy + "-b", Labels: guardLabels},
			Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: policy, ValidationActions: actions}}
	}
	for _, c := range []struct {
		name    string
		objects []client.Object
		want    bool
		why     string
	}{
		{name: "nothing installed", why: "no ValidatingAdmissionPolicy labelled"},
		{name: "an unlabelled policy", objects: []client.Object{policy("other", nil), binding("other", admissionv1.Deny)},
			why: "no ValidatingAdmissionPolicy labelled"},
		{name: "the policy without a binding", objects: []client.Object{policy("guard", guardLabels)}, why: "no binding that denies"},
		{name: "a binding that only warns", objects: []client.Object{policy("guard", guardLabels), binding("guard", admissionv1.Warn)},
			why: "no binding that denies"},
		{name: "a binding of another policy", objects: []client.Object{policy("guard", guardLabels), binding("other", admissionv1.Deny)},
			why: "no binding that denies"},
		{name: "the policy and its denying binding", want: true,
			objects: []client.Object{policy("guard", guardLabels), binding("guard", admissionv1.Audit, admissionv1.Deny)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := fake.NewClientBuilder().WithScheme(NewScheme()).WithObjects(c.objects...).Build()
			got, why, err := launcherPodGuarded(context.Background(), r)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want || (c.why != "" && !strings.Contains(why, c.why)) {
				t.Fatalf("guarded = %v (%q), want %v (%q)", got, why, c.want, c.why)
			}
		})
	}
}
