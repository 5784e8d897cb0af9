package launcher

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
)

// makeVolumes creates the pod's emptyDirs as the kubelet does: mode 0777, and with an fsGroup owned by that group
// with the setgid bit. Other volume types are refused when a container that runs mounts them.
func (p *Pod) makeVolumes() error {
	used := map[string]bool{}
	for _, c := range p.cfg.Pod.Spec.Containers {
		if p.cfg.Run(c) {
			for _, m := range c.VolumeMounts {
				used[m.Name] = true
			}
		}
	}
	var fsGroup *int64
	if sc := p.cfg.Pod.Spec.SecurityContext; sc != nil {
		fsGroup = sc.FSGroup
	}
	for _, v := range p.cfg.Pod.Spec.Volumes {
		if !used[v.Name] {
			continue
		}
		if v.EmptyDir == nil {
			return fmt.Errorf("volume %s: only emptyDir volumes are supported by the launcher runner", v.Name)
		}
		dir := filepath.Join(p.cfg.Dir, "volumes", "kubernetes.io~empty-dir", v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		mode := os.FileMode(0o777)
		if fsGroup != nil {
			if err := os.Chown(dir, 0, int(*fsGroup)); err != nil {
				return err
			}
			mode |= os.ModeSetgid
		}
		if err := os.Chmod(dir, mode); err != nil {
			return err
		}
		p.volumes[v.Name] = dir
	}
	return nil
}

// volumeSource is the host path of a volume mount, creating a missing subPath as the kubelet does: with the
// volume directory's mode and owner.
func (p *Pod) volumeSource(m corev1.VolumeMount) (string, error) {
	dir, ok := p.volumes[m.Name]
	if !ok {
		return "", fmt.Errorf("volume mount %s: no such volume", m.Name)
	}
	if m.SubPath == "" {
		return dir, nil
	}
	if filepath.IsAbs(m.SubPath) || strings.Contains(m.SubPath, "..") {
		return "", fmt.Errorf("volume mount %s: bad subPath %q", m.Name, m.SubPath)
	}
	sub := filepath.Join(dir, m.SubPath)
	if _, err := os.Stat(sub); errors.Is(err, os.ErrNotExist) {
		st, err := os.Stat(dir)
		if err != nil {
			return "", err
		}
		if err := os.MkdirAll(sub, st.Mode().Perm()); err != nil {
			return "", err
		}
		if err := os.Chmod(sub, st.Mode()&(os.ModePerm|os.ModeSetgid)); err != nil {
			return "", err
		}
		sys := st.Sys().(*syscall.Stat_t)
		if err := os.Chown(sub, int(sys.Uid), int(sys.Gid)); err != nil {
			return "", err
		}
	}
	return sub, nil
}

// hostPath maps a path in a container's view to the host through the container's volume mounts (the longest
// mount path that contains it).
func (p *Pod) hostPath(c corev1.Container, path string) (string, error) {
	best := -1
	for i, m := range c.VolumeMounts {
		if (path == m.MountPath || strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/")) &&
			(best < 0 || len(m.MountPath) > len(c.VolumeMounts[best].MountPath)) {
			best = i
		}
	}
	if best < 0 {
		return "", fmt.Errorf("%s is on no volume of container %s", path, c.Name)
	}
	m := c.VolumeMounts[best]
	src, err := p.volumeSource(m)
	if err != nil {
		return "", err
	}
	rel, _ := filepath.Rel(m.MountPath, path)
	return filepath.Join(src, rel), nil
}

// placeKernelBoot puts the kernel and initrd of the VMI's kernel boot container where virt-handler mounts them
// for virt-launcher: <container-disks volume>/kernel-boot/<file name> (KubeVirt's
// containerdisk.GetKernelBootArtifactPathFromLauncherView), readable by the qemu user.
func (p *Pod) placeKernelBoot() error {
	if p.cfg.VMI == nil || p.cfg.VMI.Spec.Domain.Firmware == nil || p.cfg.VMI.Spec.Domain.Firmware.KernelBoot == nil ||
		p.cfg.VMI.Spec.Domain.Firmware.KernelBoot.Container == nil {
		return nil
	}
	kb := p.cfg.VMI.Spec.Domain.Firmware.KernelBoot.Container
	img, ok := p.cfg.Images[kb.Image]
	if !ok {
		return fmt.Errorf("kernel boot image %s is not among the runner's images", kb.Image)
	}
	var compute *corev1.Container
	for i := range p.cfg.Pod.Spec.Containers {
		if p.cfg.Pod.Spec.Containers[i].Name == "compute" {
			compute = &p.cfg.Pod.Spec.Containers[i]
		}
	}
	if compute == nil {
		return errors.New("the pod has no compute container")
	}
	for _, f := range []string{kb.KernelPath, kb.InitrdPath} {
		if f == "" {
			continue
		}
		dst, err := p.hostPath(*compute, filepath.Join("/var/run/kubevirt/container-disks/kernel-boot", filepath.Base(f)))
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := copyFile(filepath.Join(img.Root, f), dst); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer func() { _ = in.Close() }()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}
