// Package v1alpha1 contains the runpolicy.io/v1alpha1 API: VirtualMachine and VirtualMachineOperation.
// +kubebuilder:object:generate=true
// +groupName=runpolicy.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of this API.
	GroupVersion = schema.GroupVersion{Group: "runpolicy.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a scheme: apimachinery's builder, as controller-runtime's
	// pkg/scheme is deprecated (an API package should depend on little beyond apimachinery).
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// addKnownTypes registers every kind of this package, and meta/v1's options types, for GroupVersion.
func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&VirtualMachine{}, &VirtualMachineList{},
		&VirtualMachineOperation{}, &VirtualMachineOperationList{},
		&VirtualMachinePowerSchedule{}, &VirtualMachinePowerScheduleList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
