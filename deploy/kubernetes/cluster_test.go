package kubernetes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// otelcolBinary is the collector scripts/otelcol-binary.sh builds.
const otelcolBinary = "/var/cache/grain-otelcol/v0.165.0/otelcol"

// TestCluster deploys grain with deploy/kubernetes on a real single-node
// cluster (node_test.go) and checks, in order, on the same node: the
// manifests apply as shipped (only the image and the bpffs host path
// changed, both named in the test's kustomization); a pod is ready only
// once it enforces; examples/block-http, delivered through the ConfigMap,
// blocks real HTTP/1.1 traffic to a server on the node, through the
// kubelet's ..data swap; its events reach a real OpenTelemetry Collector
// configured by otel-collector/; the least-privileged profile is what
// enforces; a rollout restart and a pod deletion let no request through
// while a client retries every 10 ms, and the new pod adopts; so do a
// switch to deploy/kubernetes-privileged and a restart after it; the
// documented uninstall leaves nothing attached.
func TestCluster(t *testing.T) { testCluster(t, false) }

// TestClusterPrivileged is TestCluster with deploy/kubernetes-privileged,
// applied from the start: the same checks, with the grain process root
// holding every capability the node's root has.
func TestClusterPrivileged(t *testing.T) { testCluster(t, true) }

func testCluster(t *testing.T, privileged bool) {
	vmtest.HostOnly(t, "the cluster's components run on the host; the guests have no container runtime")
	vmtest.RequireRoot(t)
	if _, err := os.Stat(otelcolBinary); err != nil {
		t.Fatalf("the OpenTelemetry Collector is not built (%s): run scripts/otelcol-binary.sh (make test runs it first)", otelcolBinary)
	}
	n := startNode(t)
	port := n.pair.HTTPServer(t)
	server := netip.AddrPortFrom(n.pair.ServerIP4, uint16(port))

	// Each phase builds on the last: after a failure the rest cannot run.
	failed := false
	phase := func(name string, f func(t *testing.T)) {
		if failed {
			t.Run(name, func(t *testing.T) { t.Skip("an earlier phase failed") })
			return
		}
		failed = !t.Run(name, func(st *testing.T) {
			parent := n.t
			n.t = st
			defer func() { n.t = parent }()
			f(st)
		})
	}
	var collector *proc
	var pod string

	phase("ManifestsApplyAsShipped", func(t *testing.T) {
		collector = n.startCollector()
		overlay := n.overlay(privileged)
		start := time.Now()
		n.mustKubectl("apply", "-k", overlay)
		pod = n.waitReadyPod(3*time.Minute, "")
		t.Logf("FIGURE apply to ready (enforcing, first start, image present): %.2f s", time.Since(start).Seconds())
		n.figurePodStartToReady(pod)
		if got := n.programs("eth0"); got == 0 {
			t.Fatal("the pod is ready and eth0 has no grain program: the shipped policy matches eth*")
		}
		if out := n.mustKubectl("-n", "grain-system", "logs", pod, "-c", "doctor"); !strings.Contains(out, "packet policies: can run here") {
			t.Errorf("the doctor init container says:\n%s", out)
		}
	})

	phase("ReadyOnlyWhenEnforcing", func(t *testing.T) {
		// A pattern: a name the node lacks would fail the reload instead.
		n.setPolicy("late.cue", `late: {
	xdp: interfaces: ["gk8slate*"]
	match: {protocol: "tcp", dport: 9}
	then: "drop"
}
`)
		n.waitFor(2*time.Minute, "the pod goes unready: its policy matches no interface", func() (bool, string) {
			ready := n.podReady(pod)
			return !ready, "still ready"
		})
		// Unready for as long as the interface is missing.
		for range 20 {
			if n.podReady(pod) {
				t.Fatal("the pod became ready while the policy's interface does not exist")
			}
			time.Sleep(150 * time.Millisecond)
		}
		n.must("ip", "-n", n.ns, "link", "add", "gk8slate0", "type", "veth", "peer", "name", "gk8slate1")
		n.must("ip", "-n", n.ns, "link", "set", "gk8slate0", "up")
		n.must("ip", "-n", n.ns, "link", "set", "gk8slate1", "up")
		n.waitFor(time.Minute, "the pod is ready again once the interface exists", func() (bool, string) {
			return n.podReady(pod), "not ready"
		})
		if got := n.programs("gk8slate0"); got == 0 {
			t.Fatal("the pod is ready and gk8slate0 has no grain program")
		}
	})

	phase("BlockHTTPThroughConfigMap", func(t *testing.T) {
		if blocked, err := n.blocked(server, "HTTP/1.1"); err != nil || blocked {
			t.Fatalf("before block-http: HTTP/1.1 blocked=%v, %v", blocked, err)
		}
		policy, err := os.ReadFile("../../examples/block-http/policy.cue")
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		n.setPolicy("policy.cue", string(policy))
		n.waitFor(2*time.Minute, "HTTP/1.1 blocked after the ConfigMap update", func() (bool, string) {
			b, err := n.blocked(server, "HTTP/1.1")
			return err == nil && b, fmt.Sprintf("blocked=%v err=%v", b, err)
		})
		t.Logf("FIGURE ConfigMap update to enforced (kubelet ..data swap, syncFrequency 5s): %.2f s", time.Since(start).Seconds())
		if b, err := n.blocked(server, "HTTP/1.0"); err != nil || b {
			t.Fatalf("HTTP/1.0 must pass block-http: blocked=%v, %v", b, err)
		}
		// The dashboard's metrics, from this grain's /metrics (the kernel
		// hook ones need kernel hook policies, which this profile has not).
		metrics := n.scrape()
		for _, name := range dashboardMetrics(t) {
			if !strings.HasPrefix(name, "grain_probe_") && !strings.Contains(metrics, "\n"+name+"{") {
				t.Errorf("the dashboard queries %s, which grain's /metrics does not serve; it serves %v", name, servedNames(metrics))
			}
		}
		out := n.mustKubectl("-n", "grain-system", "exec", pod, "-c", "grain", "--", "/grain", "status", "--status-socket=/run/grain/grain.sock")
		if !strings.Contains(out, "block_http") || strings.Contains(out, "count_ssh") {
			t.Errorf("grain status in the pod, after the ConfigMap replaced the tree:\n%s", out)
		}
	})

	phase("EventsAtCollector", func(t *testing.T) {
		n.waitFor(time.Minute, "http_blocked events at the OpenTelemetry Collector", func() (bool, string) {
			b, _ := os.ReadFile(collector.log)
			return strings.Contains(string(b), "http_blocked"), "the collector's log has no http_blocked record"
		})
	})

	profile := "LeastPrivileged"
	if privileged {
		profile = "Privileged"
	}
	phase(profile, func(t *testing.T) {
		pid := n.grainPID()
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		fields := map[string]string{}
		for _, line := range strings.Split(string(status), "\n") {
			k, v, _ := strings.Cut(line, ":")
			fields[k] = strings.TrimSpace(v)
		}
		if uid := strings.Fields(fields["Uid"]); !privileged && (len(uid) < 2 || uid[0] != "65532" || uid[1] != "65532") {
			t.Errorf("grain runs as uid %q, want 65532", fields["Uid"])
		}
		want := uint64(1)<<unix.CAP_BPF | 1<<unix.CAP_PERFMON | 1<<unix.CAP_NET_ADMIN
		if privileged {
			eff, err := strconv.ParseUint(fields["CapEff"], 16, 64)
			need := want | 1<<unix.CAP_SYS_ADMIN
			if uid := strings.Fields(fields["Uid"]); err != nil || len(uid) < 1 || uid[0] != "0" || eff&need != need {
				t.Errorf("the privileged grain runs as uid %q with CapEff %s: want root holding CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN", fields["Uid"], fields["CapEff"])
			}
			t.Logf("FIGURE grain's RSS in the privileged pod with examples/block-http: %s", fields["VmRSS"])
			return
		}
		for _, set := range []string{"CapEff", "CapPrm", "CapBnd"} {
			got, err := strconv.ParseUint(fields[set], 16, 64)
			if err != nil || got != want {
				t.Errorf("grain's %s is %s, want %016x (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN only)", set, fields[set], want)
			}
		}
		if fields["NoNewPrivs"] != "0" || fields["Seccomp"] != "2" {
			t.Logf("NoNewPrivs %s, Seccomp %s", fields["NoNewPrivs"], fields["Seccomp"])
		}
		t.Logf("FIGURE grain's RSS in the pod with examples/block-http: %s (main process; its policy worker: %s)", fields["VmRSS"], n.workerRSS(pid))
	})

	phase("RolloutRestartKeepsEnforcing", func(t *testing.T) {
		pod = n.replaceWithoutGap(server, pod, func() {
			n.mustKubectl("-n", "grain-system", "rollout", "restart", "daemonset/grain")
		})
	})

	phase("PodDeletionKeepsEnforcing", func(t *testing.T) {
		old := pod
		pod = n.replaceWithoutGap(server, pod, func() {
			n.mustKubectl("-n", "grain-system", "delete", "pod", old, "--wait=false")
		})
	})

	if !privileged {
		// A running node moved to the privileged profile, then restarted
		// within it: each new pod adopts what the last left pinned, through
		// another mount of the same pin directory (root's, not uid 65532's),
		// and enforces throughout. The policies in force are the user's,
		// kept as docs/deployment.md says: an apply -k would replace them
		// with the shipped example, which blocks nothing.
		phase("SwitchToPrivilegedKeepsEnforcing", func(t *testing.T) {
			pod = n.replaceWithoutGap(server, pod, func() {
				n.applyKeepingPolicies(n.overlay(true))
			})
		})
		phase("RestartAfterSwitchKeepsEnforcing", func(t *testing.T) {
			pod = n.replaceWithoutGap(server, pod, func() {
				n.mustKubectl("-n", "grain-system", "rollout", "restart", "daemonset/grain")
			})
		})
	}

	phase("UninstallLeavesNothingAttached", func(t *testing.T) {
		// docs/deployment.md's steps: pods that detach on exit, then delete.
		n.mustKubectl("-n", "grain-system", "set", "env", "daemonset/grain", "GRAIN_KEEP_ON_EXIT=false")
		n.mustKubectl("-n", "grain-system", "rollout", "status", "daemonset/grain", "--timeout=3m")
		n.mustKubectl("delete", "-k", n.path("overlay"), "--wait=true", "--timeout=3m")
		n.waitFor(2*time.Minute, "grain's pods gone", func() (bool, string) {
			out, _ := n.kubectl("get", "pods", "-A", "-o", "name")
			return !strings.Contains(out, "grain"), out
		})
		for _, dev := range []string{"eth0", "gk8slate0"} {
			if got := n.programs(dev); got != 0 {
				t.Errorf("%s still has %d grain programs after the uninstall", dev, got)
			}
		}
		if entries, err := os.ReadDir(filepath.Join(n.bpffs, "grain")); err == nil && len(entries) > 0 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("pins left after the uninstall: %v", names)
		}
		if b, err := n.blocked(server, "HTTP/1.1"); err != nil || b {
			t.Errorf("after the uninstall, HTTP/1.1 blocked=%v, %v", b, err)
		}
	})
}

// overlay writes the test's kustomization over the shipped manifests and
// returns its directory. These are its only changes, and why.
func (n *node) overlay(privileged bool) string {
	n.t.Helper()
	base, extra := ".", ""
	if privileged {
		// Change 3, privileged only: its whole-bpffs mount is the test's
		// bpffs too.
		base = "../kubernetes-privileged"
		extra = "              - name: bpffs-root\n                hostPath: {path: " + n.bpffs + ", type: DirectoryOrCreate}\n"
	}
	abs, err := filepath.Abs(base)
	if err != nil {
		n.t.Fatal(err)
	}
	dir := n.path("overlay")
	rel, err := filepath.Rel(dir, abs)
	if err != nil {
		n.t.Fatal(err)
	}
	n.write("overlay/kustomization.yaml", fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
images:
  # Change 1: the image built from this tree and imported into the node's
  # containerd (no registry here).
  - name: ghcr.io/grain-ebpf/grain
    newName: localhost/grain
    newTag: cluster-test
patches:
  # Change 2: the node's bpffs is one of the test's own (the host's
  # /sys/fs/bpf is private and shared with other tests).
  - patch: |
      apiVersion: apps/v1
      kind: DaemonSet
      metadata: {name: grain, namespace: grain-system}
      spec:
        template:
          spec:
            volumes:
              - name: bpffs
                hostPath: {path: %s, type: DirectoryOrCreate}
%s`, rel, filepath.Join(n.bpffs, "grain"), extra))
	n.t.Logf("the test's changes to the shipped manifests (%s): image ghcr.io/grain-ebpf/grain:latest -> %s; bpffs hostPath /sys/fs/bpf/grain -> %s", filepath.Join(dir, "kustomization.yaml"), grainImage, filepath.Join(n.bpffs, "grain"))
	return dir
}

// applyKeepingPolicies applies the kustomization in dir except its
// grain-policies ConfigMap, whose shipped example would replace the
// policies in force (docs/deployment.md, switching profiles).
func (n *node) applyKeepingPolicies(dir string) {
	n.t.Helper()
	var keep []string
	for _, doc := range strings.Split(n.mustKubectl("kustomize", dir), "\n---\n") {
		if strings.Contains(doc, "kind: ConfigMap") && strings.Contains(doc, "name: grain-policies\n") {
			continue
		}
		keep = append(keep, doc)
	}
	if len(keep) == 0 {
		n.t.Fatalf("kubectl kustomize %s gave nothing but the policies", dir)
	}
	n.write("switch.yaml", strings.Join(keep, "\n---\n")+"\n")
	n.mustKubectl("apply", "-f", n.path("switch.yaml"))
}

// startCollector runs the collector with otel-collector/'s configuration,
// unchanged, in the node (grain sends to the node's 127.0.0.1:4318).
func (n *node) startCollector() *proc {
	n.t.Helper()
	b, err := os.ReadFile("otel-collector/collector.yaml")
	if err != nil {
		n.t.Fatal(err)
	}
	var cfg strings.Builder
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.TrimSpace(line) == "config.yaml: |":
			in = true
		case in && (line == "---" || (line != "" && !strings.HasPrefix(line, "    "))):
			in = false
		case in:
			cfg.WriteString(strings.TrimPrefix(line, "    ") + "\n")
		}
	}
	if !strings.Contains(cfg.String(), "receivers:") {
		n.t.Fatalf("no collector configuration found in otel-collector/collector.yaml")
	}
	path := n.write("otelcol.yaml", cfg.String())
	p := n.start("otelcol", otelcolBinary, "--config="+path)
	n.waitFor(time.Minute, "the collector listens on 127.0.0.1:4318", func() (bool, string) {
		var up bool
		netns.Do(n.ns, func() error {
			c, err := net.DialTimeout("tcp", "127.0.0.1:4318", time.Second)
			if err == nil {
				c.Close()
				up = true
			}
			return nil
		})
		return up, "not listening"
	})
	return p
}

// scrape reads grain's /metrics on the node's address, as Prometheus
// would through the grain-metrics Service.
func (n *node) scrape() string {
	n.t.Helper()
	var body []byte
	err := netns.Do(n.ns, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(n.ip, 9464).String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\n\r\n")
		body, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		n.t.Fatalf("scrape grain's /metrics: %v", err)
	}
	return string(body)
}

// servedNames lists the grain metrics of a /metrics body.
func servedNames(body string) []string {
	var names []string
	for _, line := range strings.Split(body, "\n") {
		if name, _, ok := strings.Cut(line, "{"); ok && strings.HasPrefix(name, "grain_") && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// setPolicy replaces the policy ConfigMap's files with this one, as a user
// would with kubectl apply.
func (n *node) setPolicy(name, content string) {
	n.t.Helper()
	file := n.write("policy/"+name, content)
	os.Remove(n.path("policy.yaml"))
	out := n.mustKubectl("-n", "grain-system", "create", "configmap", "grain-policies", "--from-file="+name+"="+file, "--dry-run=client", "-o", "yaml")
	n.write("policy.yaml", out)
	n.mustKubectl("apply", "-f", n.path("policy.yaml"))
}

type podList struct {
	Items []struct {
		Metadata struct {
			Name              string    `json:"name"`
			DeletionTimestamp *string   `json:"deletionTimestamp"`
			CreationTimestamp time.Time `json:"creationTimestamp"`
		} `json:"metadata"`
		Status struct {
			StartTime  time.Time `json:"startTime"`
			Conditions []struct {
				Type               string    `json:"type"`
				Status             string    `json:"status"`
				LastTransitionTime time.Time `json:"lastTransitionTime"`
			} `json:"conditions"`
			ContainerStatuses []struct {
				Name  string `json:"name"`
				State struct {
					Running *struct {
						StartedAt time.Time `json:"startedAt"`
					} `json:"running"`
				} `json:"state"`
			} `json:"containerStatuses"`
		} `json:"status"`
	} `json:"items"`
}

func (n *node) pods() podList {
	var l podList
	out, err := n.kubectl("-n", "grain-system", "get", "pods", "-l", "app.kubernetes.io/component=agent", "-o", "json")
	if err == nil {
		json.Unmarshal([]byte(out), &l)
	}
	return l
}

func (n *node) podReady(name string) bool {
	for _, p := range n.pods().Items {
		if p.Metadata.Name != name {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == "Ready" {
				return c.Status == "True"
			}
		}
	}
	return false
}

// waitReadyPod waits for a ready grain pod other than old and names it.
func (n *node) waitReadyPod(d time.Duration, old string) string {
	n.t.Helper()
	var name string
	n.waitFor(d, "a ready grain pod", func() (bool, string) {
		for _, p := range n.pods().Items {
			if p.Metadata.Name == old || p.Metadata.DeletionTimestamp != nil {
				continue
			}
			if n.podReady(p.Metadata.Name) {
				name = p.Metadata.Name
				return true, ""
			}
		}
		out, _ := n.kubectl("-n", "grain-system", "get", "pods", "-o", "wide")
		return false, out
	})
	return name
}

// figurePodStartToReady logs the pod's container start to its Ready
// condition (the API's times, whole seconds).
func (n *node) figurePodStartToReady(name string) {
	for _, p := range n.pods().Items {
		if p.Metadata.Name != name {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type != "Ready" {
				continue
			}
			for _, cs := range p.Status.ContainerStatuses {
				if cs.Name == "grain" && cs.State.Running != nil {
					n.t.Logf("FIGURE pod created to ready: %v; grain container started to ready: %v (API times, whole seconds)",
						c.LastTransitionTime.Sub(p.Metadata.CreationTimestamp), c.LastTransitionTime.Sub(cs.State.Running.StartedAt))
				}
			}
		}
	}
}

// programs counts the BPF programs attached to dev in the node: tcx
// ingress and egress programs, and XDP.
func (n *node) programs(dev string) int {
	n.t.Helper()
	count := 0
	err := netns.Do(n.ns, func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			count++
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			r, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at})
			if err == nil {
				count += len(r.Programs)
			}
		}
		return nil
	})
	if err != nil {
		n.t.Fatalf("programs on %s: %v", dev, err)
	}
	return count
}

// blocked sends one request from the client namespace to the server on the
// node, on a new connection, and reports whether no answer came within a
// second. A failed connection is an error: the path itself is broken.
func (n *node) blocked(server netip.AddrPort, version string) (bool, error) {
	answered, err := n.request(server, version, time.Second)
	return !answered && err == nil, err
}

func (n *node) request(server netip.AddrPort, version string, wait time.Duration) (bool, error) {
	dial := netns.DialContextIn(n.pair.ClientNS)
	ctx, cancel := contextWithTimeout(time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", server.String())
	if err != nil {
		return false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	if _, err := fmt.Fprintf(c, "GET / %s\r\nHost: node\r\n\r\n", version); err != nil {
		return false, err
	}
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// replaceWithoutGap replaces the grain pod by what replace does while a
// client sends an HTTP/1.1 request every 10 ms (each on a new connection,
// waiting a second for an answer) and another an HTTP/1.0 one every 100
// ms, and checks that none of the first got an answer, that the second
// did (the path works), and that the new pod adopted the old one's pinned
// state. It returns the new pod.
func (n *node) replaceWithoutGap(server netip.AddrPort, old string, replace func()) string {
	n.t.Helper()
	var tries, leaks, controls, controlOK, errs atomic.Int64
	// When the first and last request got through, and what the old pod
	// said while it stopped: a leak's cause is in one pod or the other.
	var leakMu sync.Mutex
	var firstLeak, lastLeak time.Time
	oldLog := exec.Command("nsenter", "--net="+filepath.Join(netns.Dir, n.ns), "--",
		filepath.Join(n.bin, "kubectl"), "--kubeconfig="+n.path("kubeconfig"), "-n", "grain-system", "logs", "-f", "--timestamps", old, "-c", "grain")
	var oldOut bytes.Buffer
	oldLog.Stdout, oldLog.Stderr = &oldOut, &oldOut
	if err := oldLog.Start(); err != nil {
		n.t.Fatalf("follow the old pod's log: %v", err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	loop := func(every time.Duration, version string, sent, answered *atomic.Int64) {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			sent.Add(1)
			wg.Go(func() {
				ok, err := n.request(server, version, time.Second)
				if err != nil {
					errs.Add(1)
				}
				if ok {
					answered.Add(1)
					if version == "HTTP/1.1" {
						leakMu.Lock()
						if firstLeak.IsZero() {
							firstLeak = time.Now()
						}
						lastLeak = time.Now()
						leakMu.Unlock()
					}
				}
			})
		}
	}
	wg.Go(func() { loop(10*time.Millisecond, "HTTP/1.1", &tries, &leaks) })
	wg.Go(func() { loop(100*time.Millisecond, "HTTP/1.0", &controls, &controlOK) })
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	replace()
	pod := n.waitReadyPod(3*time.Minute, old)
	took := time.Since(start)
	n.waitFor(time.Minute, "the new pod's log says it adopted", func() (bool, string) {
		out, _ := n.kubectl("-n", "grain-system", "logs", pod, "-c", "grain")
		return strings.Contains(out, "msg=adopted"), "no adopted line yet"
	})
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	oldLog.Process.Kill()
	oldLog.Wait()
	n.t.Logf("FIGURE replacement (old pod %s -> %s ready in %.2f s): %d HTTP/1.1 requests sent every 10 ms, %d answered; %d HTTP/1.0 controls, %d answered; %d connection errors",
		old, pod, took.Seconds(), tries.Load(), leaks.Load(), controls.Load(), controlOK.Load(), errs.Load())
	if leaks.Load() != 0 {
		out, _ := n.kubectl("-n", "grain-system", "logs", pod, "-c", "grain")
		n.t.Logf("the new pod's log:\n%s", out)
		n.t.Logf("leaks from %s to %s; replace at %s; the old pod's log:\n%s", firstLeak.Format(time.RFC3339Nano), lastLeak.Format(time.RFC3339Nano), start.Format(time.RFC3339Nano), oldOut.String())
		n.t.Errorf("%d of %d HTTP/1.1 requests got through while the pod was replaced", leaks.Load(), tries.Load())
	}
	if controlOK.Load() == 0 || tries.Load() < 100 {
		n.t.Errorf("the client did not run (%d tries) or the path was broken (%d of %d controls answered)", tries.Load(), controlOK.Load(), controls.Load())
	}
	return pod
}

// grainPID finds the running grain in the node: its network namespace and
// its command name (the policy worker renames itself grain-worker).
func (n *node) grainPID() int {
	n.t.Helper()
	var want unix.Stat_t
	if err := unix.Stat(filepath.Join(netns.Dir, n.ns), &want); err != nil {
		n.t.Fatal(err)
	}
	comms, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, c := range comms {
		b, _ := os.ReadFile(c)
		if strings.TrimSpace(string(b)) != "grain" {
			continue
		}
		dir := filepath.Dir(c)
		var st unix.Stat_t
		if unix.Stat(filepath.Join(dir, "ns/net"), &st) != nil || st.Ino != want.Ino {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(dir))
		return pid
	}
	n.t.Fatal("no grain process runs in the node's network namespace")
	return 0
}

// workerRSS is the VmRSS of grain's policy worker, a child of pid.
func (n *node) workerRSS(pid int) string {
	children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, c := range strings.Fields(string(children)) {
		b, _ := os.ReadFile("/proc/" + c + "/status")
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				return strings.TrimSpace(v)
			}
		}
	}
	return "none running"
}
