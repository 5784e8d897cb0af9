package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	k8sv1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	v1 "kubevirt.io/api/core/v1"

	"kubevirt.io/kubevirt/pkg/hooks"
	"kubevirt.io/kubevirt/pkg/testutils"
	"kubevirt.io/kubevirt/pkg/virt-api/webhooks/mutating-webhook/mutators"
	"kubevirt.io/kubevirt/pkg/virt-controller/services"
)

// virt-controller's defaults (pkg/virt-controller/watch/application.go flags).
const (
	launcherQemuTimeout = 240
	virtShareDir        = "/var/run/kubevirt"
	ephemeralDiskDir    = "/var/run/kubevirt-ephemeral-disks"
	containerDiskDir    = "/var/run/kubevirt/container-disks"
	launcherSubGid      = 107
)

func render(args []string) error {
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	gates := fs.String("feature-gates", "Sidecar", "comma-separated KubeVirt feature gates (the KubeVirt CR's developerConfiguration)")
	image := fs.String("launcher-image", "quay.io/kubevirt/virt-launcher:test", "virt-controller's --launcher-image")
	emulation := fs.Bool("use-emulation", true, "the KubeVirt CR's developerConfiguration.useEmulation (--allow-emulation: QEMU's TCG without /dev/kvm)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	vmi := &v1.VirtualMachineInstance{}
	if err := json.NewDecoder(os.Stdin).Decode(vmi); err != nil {
		return fmt.Errorf("reading the VMI: %w", err)
	}
	cfg := &v1.KubeVirtConfiguration{DeveloperConfiguration: &v1.DeveloperConfiguration{UseEmulation: *emulation}}
	for _, g := range strings.Split(*gates, ",") {
		if g = strings.TrimSpace(g); g != "" {
			cfg.DeveloperConfiguration.FeatureGates = append(cfg.DeveloperConfiguration.FeatureGates, g)
		}
	}
	clusterConfig, _, _ := testutils.NewFakeClusterConfigUsingKVConfig(cfg)
	// virt-api's VMI mutating webhook on create (mutators.VMIsMutator.Mutate): defaults, non-root mode unless the
	// Root gate is on (status.runtimeUser 107), the foreground finalizer, phase Pending.
	if err := mutators.ApplyNewVMIMutations(vmi, clusterConfig); err != nil {
		return fmt.Errorf("virt-api's VMI mutations: %w", err)
	}
	vmi.Finalizers = append(vmi.Finalizers, v1.VirtualMachineInstanceFinalizer)
	vmi.Status.Phase = v1.Pending
	store := func() cache.Store { return cache.NewStore(cache.MetaNamespaceKeyFunc) }
	svc := services.NewTemplateService(*image, launcherQemuTimeout, virtShareDir, ephemeralDiskDir, containerDiskDir,
		v1.HotplugDiskDir, "", store(), nil, clusterConfig, launcherSubGid, "quay.io/kubevirt/virt-exportserver:test",
		store(), store(),
		services.WithSidecarCreator(func(vmi *v1.VirtualMachineInstance, _ *v1.KubeVirtConfiguration) (hooks.HookSidecarList, error) {
			return hooks.UnmarshalHookSidecarList(vmi)
		}))
	pod, err := svc.RenderLaunchManifest(vmi)
	if err != nil {
		return fmt.Errorf("virt-controller's RenderLaunchManifest: %w", err)
	}
	return json.NewEncoder(os.Stdout).Encode(struct {
		VMI *v1.VirtualMachineInstance `json:"vmi"`
		Pod *k8sv1.Pod                 `json:"pod"`
	}{vmi, pod})
}
