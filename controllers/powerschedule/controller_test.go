//go:build !unit

package powerschedule_test

import (
	"os"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/powerschedule"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/internal/schedule"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/fixture"
)

var env *cluster.Env

func TestMain(m *testing.M) {
	var err error
	env, err = cluster.Start(cluster.Options{})
	if err != nil {
		panic(err)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

// clock is the reconciler's time, moved by the test.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func namespace(t *testing.T, g Gomega) string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "schedule-"}}
	g.Expect(env.Client.Create(t.Context(), ns)).To(Succeed())
	return ns.Name
}

func powerSchedule(ns, name string, spec v1alpha1.VirtualMachinePowerScheduleSpec) *v1alpha1.VirtualMachinePowerSchedule {
	return &v1alpha1.VirtualMachinePowerSchedule{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

func TestAdmissionRefusesBadSchedulesNamingTheField(t *testing.T) {
	g := NewWithT(t)
	ns := namespace(t, g)
	web := &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "web"}}
	for _, tc := range []struct {
		name  string
		spec  v1alpha1.VirtualMachinePowerScheduleSpec
		field string
	}{
		{"an hour of 25", v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: "0 25 * * *", Action: v1alpha1.OperationStop, VMSelector: web}, "spec.schedule"},
		{"four fields", v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: "0 8 * *", Action: v1alpha1.OperationStop, VMSelector: web}, "spec.schedule"},
		{"@every", v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: "@every 5m", Action: v1alpha1.OperationStop, VMSelector: web}, "spec.schedule"},
		{"a time zone in the expression", v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: "CRON_TZ=UTC 0 8 * * *", Action: v1alpha1.OperationStop, VMSelector: web}, "spec.schedule"},
		{"an unknown time zone", v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: "0 8 * * *", TimeZone: "Mars/Olympus_Mons", Action: v1alpha1.OperationStop, VMSelector: web}, "spec.timeZone"},
		{"no VMs named", v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: "0 8 * * *", Action: v1alpha1.OperationStop}, "spec.vmSelector"},
		{"both ways of naming VMs", v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: "0 8 * * *", Action: v1alpha1.OperationStop, VMSelector: web, VirtualMachineNames: []string{"a"}}, "spec.vmSelector"},
		{"a forced Start", v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: "0 8 * * *", Action: v1alpha1.OperationStart, Force: true, VMSelector: web}, "spec.force"},
		{"an unknown action", v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: "0 8 * * *", Action: "Hibernate", VMSelector: web}, "spec.action"},
	} {
		err := env.Client.Create(t.Context(), powerSchedule(ns, "bad", tc.spec))
		g.Expect(err).To(HaveOccurred(), tc.name)
		g.Expect(err.Error()).To(ContainSubstring(tc.field), tc.name)
		t.Logf("%s: %v", tc.name, err)
	}

	for _, expr := range []string{"0 8 * * 1-5", "*/15 6-18 * * MON-FRI", "30 2 1,15 jan,jul *", "0 0 ? * SUN", "@daily", "@weekly"} {
		ok := powerSchedule(ns, "ok", v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: expr, Action: v1alpha1.OperationRestart, VMSelector: web})
		g.Expect(env.Client.Create(t.Context(), ok)).To(Succeed(), expr)
		g.Expect(ok.Spec.TimeZone).To(Equal("UTC"), "the default time zone")
		g.Expect(ok.Spec.StartingDeadlineSeconds).To(HaveValue(BeEquivalentTo(300)))
		g.Expect(env.Client.Delete(t.Context(), ok)).To(Succeed())
	}
}

// TestRuns follows one schedule through its runs with a clock of the test's: a forced Stop of the VMs labelled
// tier=web at 08:00 Monday to Friday in Europe/Berlin.
func TestRuns(t *testing.T) {
	g := NewWithT(t)
	ctx := ctrl.LoggerInto(t.Context(), ctrl.Log)
	ns := namespace(t, g)
	c := env.Client
	for _, name := range []string{"web-a", "web-b", "db"} {
		v := fixture.VM(ns, name, v1alpha1.RunPolicyManual)
		if strings.HasPrefix(name, "web") {
			v.Labels = map[string]string{"tier": "web"}
		}
		g.Expect(c.Create(ctx, v)).To(Succeed())
	}
	ps := powerSchedule(ns, "nightly", v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: "0 8 * * 1-5", TimeZone: "Europe/Berlin",
		Action: v1alpha1.OperationStop, Force: true, VMSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "web"}}})
	g.Expect(c.Create(ctx, ps)).To(Succeed())
	key := client.ObjectKeyFromObject(ps)

	// The schedule's runs after its creation (it counts from there), as internal/schedule reads them.
	sched, err := schedule.Parse(ps.Spec.Schedule, ps.Spec.TimeZone)
	g.Expect(err).NotTo(HaveOccurred())
	runs := []time.Time{sched.Next(ps.CreationTimestamp.Time)}
	for len(runs) < 6 {
		runs = append(runs, sched.Next(runs[len(runs)-1]))
	}
	g.Expect(runs[0].In(time.UTC).Hour()).To(BeElementOf(6, 7), "08:00 in Berlin is 06:00 or 07:00 UTC")
	clk := &clock{now: ps.CreationTimestamp.Add(time.Second)}
	rec := events.NewFakeRecorder(100)
	r := &powerschedule.Reconciler{Client: c, APIReader: c, Recorder: rec, Clock: clk.Now}
	reconcile := func() ctrl.Result {
		res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: key})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(c.Get(ctx, key, ps)).To(Succeed())
		return res
	}
	// told drains the Events recorded since the last call.
	told := func() []string {
		var evs []string
		for {
			select {
			case e := <-rec.Events:
				evs = append(evs, e)
			default:
				return evs
			}
		}
	}
	ops := func() []v1alpha1.VirtualMachineOperation {
		var list v1alpha1.VirtualMachineOperationList
		g.Expect(c.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{powerschedule.LabelSchedule: "nightly"})).To(Succeed())
		return list.Items
	}

	t.Log("created: the next run is the next weekday 08:00 in Berlin")
	res := reconcile()
	g.Expect(ps.Status.NextScheduleTime).To(HaveValue(HaveField("Time", BeTemporally("==", runs[0]))))
	g.Expect(res.RequeueAfter).To(BeNumerically(">=", runs[0].Sub(clk.now)))
	g.Expect(ps.Status.Conditions).To(ContainElement(And(HaveField("Type", v1alpha1.ScheduleConditionReady),
		HaveField("Status", metav1.ConditionTrue), HaveField("Reason", v1alpha1.ScheduleReasonScheduled))))
	g.Expect(ops()).To(BeEmpty())

	t.Log("its time: one forced Stop operation per web VM, owned by the VM, labelled with the schedule")
	clk.now = runs[0].Add(time.Second)
	reconcile()
	made := ops()
	g.Expect(made).To(HaveLen(2))
	for _, op := range made {
		g.Expect(op.Spec.Type).To(Equal(v1alpha1.OperationStop))
		g.Expect(op.Spec.Force).To(BeTrue())
		g.Expect(op.Spec.VirtualMachineName).To(BeElementOf("web-a", "web-b"))
		g.Expect(op.Labels).To(HaveKeyWithValue(vm.LabelReason, powerschedule.ReasonSchedule))
		g.Expect(op.Annotations).To(HaveKeyWithValue(powerschedule.AnnotationScheduledTime, runs[0].UTC().Format(time.RFC3339)))
		g.Expect(op.OwnerReferences).To(ConsistOf(HaveField("Name", op.Spec.VirtualMachineName)))
	}
	g.Expect(ps.Status.LastRun).NotTo(BeNil())
	g.Expect(ps.Status.LastRun.VMs).To(BeEquivalentTo(2))
	g.Expect(ps.Status.LastRun.Operations).To(HaveLen(2))
	g.Expect(ps.Status.LastRun.LateSeconds).To(BeEquivalentTo(1))
	g.Expect(ps.Status.NextScheduleTime).To(HaveValue(HaveField("Time", BeTemporally("==", runs[1]))))
	g.Expect(told()).To(ContainElement(ContainSubstring("Stop of 2 VM(s) for the run due at " + runs[0].UTC().Format(time.RFC3339))))

	t.Log("a pass again, and a pass after a crash that lost the status write: no second operation")
	reconcile()
	lost := ps.DeepCopy()
	lost.Status.LastScheduleTime = &metav1.Time{Time: ps.CreationTimestamp.Time}
	g.Expect(c.Status().Update(ctx, lost)).To(Succeed())
	reconcile()
	g.Expect(ops()).To(HaveLen(2))
	g.Expect(told()).NotTo(ContainElement(ContainSubstring("Stop of")), "the run is told once")
	g.Expect(ps.Status.LastScheduleTime).To(HaveValue(HaveField("Time", BeTemporally("==", runs[0]))))

	t.Log("the operator was down until two minutes after the fourth run: the second and third skipped, the fourth made late")
	clk.now = runs[3].Add(2 * time.Minute)
	reconcile()
	g.Expect(ops()).To(HaveLen(4))
	g.Expect(ps.Status.SkippedRuns).To(BeEquivalentTo(2))
	g.Expect(ps.Status.LastRun.ScheduledTime).To(HaveValue(HaveField("Time", BeTemporally("==", runs[3]))))
	g.Expect(ps.Status.LastRun.LateSeconds).To(BeEquivalentTo(120))
	g.Expect(told()).To(ContainElement(ContainSubstring("Skipped 2 run(s)")))

	t.Log("down again until an hour after the fifth run: beyond the deadline, the run is skipped and reported")
	clk.now = runs[4].Add(time.Hour)
	reconcile()
	g.Expect(ops()).To(HaveLen(4))
	g.Expect(ps.Status.SkippedRuns).To(BeEquivalentTo(3))
	g.Expect(ps.Status.LastSkippedTime).To(HaveValue(HaveField("Time", BeTemporally("==", runs[4]))))
	g.Expect(told()).To(ContainElement(And(ContainSubstring("Skipped 1 run(s)"), ContainSubstring("more than spec.startingDeadlineSeconds"))))
	g.Expect(ps.Status.NextScheduleTime).To(HaveValue(HaveField("Time", BeTemporally("==", runs[5]))))

	t.Log("suspended: no next run, Ready False; a changed spec counts from the change")
	ps.Spec.Suspend = true
	g.Expect(c.Update(ctx, ps)).To(Succeed())
	res = reconcile()
	g.Expect(ps.Status.NextScheduleTime).To(BeNil())
	g.Expect(res.RequeueAfter).To(BeZero())
	g.Expect(ps.Status.Conditions).To(ContainElement(And(HaveField("Status", metav1.ConditionFalse), HaveField("Reason", v1alpha1.ScheduleReasonSuspended))))
	clk.now = runs[5].Add(time.Minute)
	ps.Spec.Suspend = false
	g.Expect(c.Update(ctx, ps)).To(Succeed())
	reconcile()
	g.Expect(ops()).To(HaveLen(4), "the sixth run came due while suspended: not made late")
	g.Expect(ps.Status.NextScheduleTime).To(HaveValue(HaveField("Time", BeTemporally("==", sched.Next(runs[5])))))
}

// TestNamedVMs: a run names the VMs of spec.virtualMachineNames that exist and reports the others.
func TestNamedVMs(t *testing.T) {
	g := NewWithT(t)
	ctx := t.Context()
	ns := namespace(t, g)
	c := env.Client
	g.Expect(c.Create(ctx, fixture.VM(ns, "batch", v1alpha1.RunPolicyManual))).To(Succeed())
	ps := powerSchedule(ns, "start", v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: "*/5 * * * *",
		Action: v1alpha1.OperationStart, VirtualMachineNames: []string{"batch", "gone"}, StartingDeadlineSeconds: ptr.To[int32](60)})
	g.Expect(c.Create(ctx, ps)).To(Succeed())
	next := ps.CreationTimestamp.Truncate(5 * time.Minute).Add(5 * time.Minute)
	clk := &clock{now: next.Add(10 * time.Second)}
	r := &powerschedule.Reconciler{Client: c, APIReader: c, Recorder: events.NewFakeRecorder(10), Clock: clk.Now}
	_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(ps)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Get(ctx, client.ObjectKeyFromObject(ps), ps)).To(Succeed())
	g.Expect(ps.Status.LastRun).NotTo(BeNil())
	g.Expect(ps.Status.LastRun.VMs).To(BeEquivalentTo(1))
	g.Expect(ps.Status.LastRun.MissingVirtualMachines).To(Equal([]string{"gone"}))
	var list v1alpha1.VirtualMachineOperationList
	g.Expect(c.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
	g.Expect(list.Items).To(ConsistOf(And(HaveField("Spec.VirtualMachineName", "batch"), HaveField("Spec.Type", v1alpha1.OperationStart),
		HaveField("Spec.Force", false))))
}
