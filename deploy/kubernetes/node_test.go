package kubernetes

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/netns"
)

// A single-node Kubernetes cluster of real components, started by the test
// and removed at its end. Every component runs inside the node's network
// namespace (a netns.Pair's server side, whose veth end is renamed eth0:
// the policies' interface) and inside a mount namespace of the test's own,
// so that nothing it does reaches the machine's network or mounts:
//   - etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
//     kube-proxy, kubelet and containerd, each a process of the test;
//   - the Kubernetes binaries from scripts/k8s-binaries.sh's cache, the
//     rest (etcd, containerd, runc, CNI plugins, ctr) from Debian;
//   - the kubelet's kernel settings (kernel.panic and others it would set
//     on the host) are answered by files bind-mounted over /proc/sys in
//     that mount namespace, at the values it wants: it leaves the host's
//     alone;
//   - its pods' bpffs is a bpffs of the test's own, a shared mount (as
//     Bidirectional and HostToContainer propagation need).

const (
	k8sVersion = "v1.34.4"
	nodeName   = "grain-test-node"
	adminToken = "grain-cluster-test-admin"
	apiPort    = 6443
)

// k8sBinDir is where scripts/k8s-binaries.sh leaves the built components.
func k8sBinDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join("/var/cache/grain-k8s", k8sVersion)
	if env := os.Getenv("GRAIN_K8S_CACHE"); env != "" {
		dir = filepath.Join(env, k8sVersion)
	}
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		t.Fatalf("the Kubernetes %s binaries are not built (%s): run scripts/k8s-binaries.sh (make test runs it first; about 20 minutes, then cached)", k8sVersion, dir)
	}
	return dir
}

// node is the running cluster.
type node struct {
	t       *testing.T
	work    string // everything the cluster writes
	bin     string // the Kubernetes binaries
	pair    *netns.Pair
	ns      string // the node's network namespace
	mntns   string // the file that holds the mount namespace
	bpffs   string // the pods' /sys/fs/bpf
	cgroup  string // the kubelet's cgroup root
	ip      netip.Addr
	procs   []*proc
	timeout time.Time
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startNode starts the cluster and registers its removal.
func startNode(t *testing.T) *node {
	t.Helper()
	bin := k8sBinDir(t)
	for _, tool := range []string{"etcd", "containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare", "mount", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: scripts/deps.sh installs the cluster's packages (etcd-server, containerd, runc, containernetworking-plugins)", tool)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		t.Fatal("the CNI plugins are missing (/usr/lib/cni/bridge): apt-get install containernetworking-plugins (scripts/deps.sh)")
	}
	// Short: containerd's sockets live under it (108 bytes at most).
	work, err := os.MkdirTemp("", "gk8s-")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, work: work, bin: bin, timeout: time.Now().Add(12 * time.Minute)}
	n.cgroup = "/" + filepath.Base(work)
	t.Cleanup(func() { os.RemoveAll(work) })

	n.pair = netns.NewPair(t)
	n.ns, n.ip = n.pair.ServerNS, n.pair.ServerIP4
	for _, args := range [][]string{
		{"-n", n.ns, "link", "set", n.pair.ServerIf, "down"},
		{"-n", n.ns, "link", "set", n.pair.ServerIf, "name", "eth0"},
		{"-n", n.ns, "link", "set", "eth0", "up"},
		// Down, the link lost its IPv6 address (the server listens there too).
		{"-n", n.ns, "addr", "replace", n.pair.ServerIP6.String() + "/64", "dev", "eth0", "nodad"},
	} {
		n.must("ip", args...)
	}
	n.pair.ServerIf = "eth0"

	// The pods' bpffs, shared so that a pod's Bidirectional (or
	// HostToContainer) mount of it is allowed.
	n.bpffs = filepath.Join(work, "bpf")
	n.mkdir(n.bpffs)
	if err := syscall.Mount("bpf", n.bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount a bpffs at %s: %v", n.bpffs, err)
	}
	t.Cleanup(func() { syscall.Unmount(n.bpffs, syscall.MNT_DETACH) })
	n.must("mount", "--make-shared", n.bpffs)

	n.mountNamespace()
	n.makeCgroups()
	t.Cleanup(n.stop)
	n.writeCerts()
	n.startComponents()
	return n
}

func (n *node) mkdir(dir string) {
	n.t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) write(name, content string) string {
	n.t.Helper()
	path := filepath.Join(n.work, name)
	n.mkdir(filepath.Dir(path))
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		n.t.Fatal(err)
	}
	return path
}

func (n *node) must(name string, args ...string) string {
	n.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNode runs a command inside the node's network and mount namespaces.
func (n *node) inNode(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + filepath.Join(netns.Dir, n.ns), "--mount=" + n.mntns, "--", name}, args...)...)
}

// kubeletSysctls are the kernel settings the kubelet sets when they differ
// (pkg/kubelet/cm's setupKernelTunables): its mount namespace shows it
// these values instead of the host's.
var kubeletSysctls = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// mountNamespace makes the namespace the node's processes share: the
// kubelet's volume mounts must be seen by containerd's runc, and neither
// their mounts nor the kubelet's sysctls may reach the host.
func (n *node) mountNamespace() {
	n.t.Helper()
	n.mntns = n.write("mntns", "")
	n.must("unshare", "--mount="+n.mntns, "--propagation", "unchanged", "true")
	n.t.Cleanup(func() { syscall.Unmount(n.mntns, syscall.MNT_DETACH) })
	var script strings.Builder
	for key, want := range kubeletSysctls {
		cur, err := os.ReadFile("/proc/sys/" + key)
		if err != nil || strings.TrimSpace(string(cur)) == want {
			continue
		}
		fake := n.write("sysctl/"+strings.ReplaceAll(key, "/", "."), want+"\n")
		fmt.Fprintf(&script, "mount --bind %s /proc/sys/%s\n", fake, key)
	}
	// The kubelet's container log links, kept from the host's /var/log.
	for _, dir := range []string{"/var/log/containers", "/var/log/pods"} {
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		fmt.Fprintf(&script, "mount -t tmpfs tmpfs %s\n", dir)
	}
	out, err := exec.Command("nsenter", "--mount="+n.mntns, "--", "sh", "-ec", script.String()).CombinedOutput()
	if err != nil {
		n.t.Fatalf("prepare the node's mount namespace: %v\n%s\n%s", err, script.String(), out)
	}
}

// makeCgroups creates the kubelet's cgroup root in every hierarchy (the
// kubelet wants it to exist); cpuset's needs its parent's CPUs and nodes.
func (n *node) makeCgroups() {
	n.t.Helper()
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	for _, procs := range hierarchies {
		h := filepath.Dir(procs)
		if fi, err := os.Lstat(h); err != nil || !fi.IsDir() {
			continue
		}
		dir := filepath.Join(h, n.cgroup)
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			n.t.Fatalf("create the kubelet's cgroup root: %v", err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
					n.t.Fatalf("set %s of %s: %v", f, dir, err)
				}
			}
		}
	}
}

// start runs a component in the node, its output in work/logs/NAME.log.
func (n *node) start(name, bin string, args ...string) *proc {
	n.t.Helper()
	logPath := filepath.Join(n.work, "logs", name+".log")
	n.mkdir(filepath.Dir(logPath))
	f, err := os.Create(logPath)
	if err != nil {
		n.t.Fatal(err)
	}
	cmd := n.inNode(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		f.Close()
		close(p.done)
	}()
	n.procs = append(n.procs, p)
	return p
}

// logTail is the end of a component's log, for failure messages.
func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// waitFor polls cond until it holds, failing the test after d (or at the
// cluster's overall bound) with what cond last said.
func (n *node) waitFor(d time.Duration, what string, cond func() (bool, string)) {
	n.t.Helper()
	deadline := time.Now().Add(d)
	if deadline.After(n.timeout) {
		deadline = n.timeout
	}
	last := ""
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		for _, p := range n.procs {
			select {
			case <-p.done:
				n.t.Fatalf("waiting for %s: %s exited: %s\n%s", what, p.name, p.cmd.ProcessState, p.logTail())
			default:
			}
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: not within %v: %s", what, d, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (n *node) writeCerts() {
	n.t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		n.t.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "grain-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		n.t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		n.t.Fatal(err)
	}
	srv := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.IP(n.ip.AsSlice()), net.ParseIP("10.96.0.1")},
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		n.t.Fatal(err)
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		n.t.Fatal(err)
	}
	pemOf := func(typ string, der []byte) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
	}
	srvKeyDER, _ := x509.MarshalECPrivateKey(srvKey)
	saPub, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	n.write("pki/ca.crt", pemOf("CERTIFICATE", caDER))
	n.write("pki/apiserver.crt", pemOf("CERTIFICATE", srvDER))
	n.write("pki/apiserver.key", pemOf("EC PRIVATE KEY", srvKeyDER))
	n.write("pki/sa.key", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)))
	n.write("pki/sa.pub", pemOf("PUBLIC KEY", saPub))
	n.write("pki/tokens.csv", adminToken+",admin,admin,system:masters\n")
	n.write("kubeconfig", fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:%d
    certificate-authority: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, apiPort, filepath.Join(n.work, "pki/ca.crt"), adminToken))
}

func (n *node) path(name string) string { return filepath.Join(n.work, name) }

func (n *node) startComponents() {
	n.t.Helper()
	start := time.Now()
	w := n.path
	n.start("etcd", "etcd", "--name=default", "--data-dir="+w("etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=default=http://127.0.0.1:2380", "--log-level=warn")

	n.write("containerd/config.toml", fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:grain-test"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[5]q
`, w("containerd/root"), w("containerd/state"), w("containerd/sock"), w("containerd/sock.ttrpc"), w("cni")))
	n.write("cni/10-grain-test.conflist", fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "grain-test", "plugins": [
  {"type": "bridge", "bridge": "gk8s0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]], "dataDir": %q}}]}
`, w("cni-ipam")))
	n.start("containerd", "containerd", "--config="+w("containerd/config.toml"))

	n.start("kube-apiserver", filepath.Join(n.bin, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379", "--bind-address=0.0.0.0", fmt.Sprintf("--secure-port=%d", apiPort),
		"--advertise-address="+n.ip.String(), "--service-cluster-ip-range=10.96.0.0/24",
		"--token-auth-file="+w("pki/tokens.csv"), "--client-ca-file="+w("pki/ca.crt"),
		"--tls-cert-file="+w("pki/apiserver.crt"), "--tls-private-key-file="+w("pki/apiserver.key"),
		"--service-account-key-file="+w("pki/sa.pub"), "--service-account-signing-key-file="+w("pki/sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc", "--authorization-mode=AlwaysAllow",
		"--allow-privileged=true", "--enable-priority-and-fairness=false", "--profiling=false",
		"--cert-dir="+w("apiserver"), "--event-ttl=10m", "--kubelet-preferred-address-types=InternalIP")
	n.waitFor(2*time.Minute, "the API server answers", func() (bool, string) {
		out, err := n.kubectl("get", "--raw=/readyz")
		return err == nil && strings.Contains(out, "ok"), out
	})
	n.t.Logf("API server ready %.1f s after the start", time.Since(start).Seconds())

	n.start("kube-controller-manager", filepath.Join(n.bin, "kube-controller-manager"),
		"--kubeconfig="+w("kubeconfig"), "--leader-elect=false", "--bind-address=127.0.0.1",
		"--service-account-private-key-file="+w("pki/sa.key"), "--root-ca-file="+w("pki/ca.crt"),
		"--use-service-account-credentials=false", "--profiling=false")
	n.start("kube-scheduler", filepath.Join(n.bin, "kube-scheduler"),
		"--kubeconfig="+w("kubeconfig"), "--leader-elect=false", "--bind-address=127.0.0.1", "--profiling=false")

	n.importImages()
	n.write("kubelet.yaml", fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: %s
failSwapOn: false
failCgroupV1: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
syncFrequency: 5s
podLogsDir: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
serializeImagePulls: false
`, n.cgroup, w("pod-logs")))
	n.start("kubelet", filepath.Join(n.bin, "kubelet"),
		"--config="+w("kubelet.yaml"), "--kubeconfig="+w("kubeconfig"),
		"--container-runtime-endpoint=unix://"+w("containerd/sock"), "--hostname-override="+nodeName,
		"--node-ip="+n.ip.String(), "--root-dir="+w("kubelet"), "--cert-dir="+w("kubelet/pki"))

	n.write("kube-proxy.yaml", fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %s}
hostnameOverride: %s
mode: iptables
clusterCIDR: 10.244.0.0/24
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`, w("kubeconfig"), nodeName))
	n.start("kube-proxy", filepath.Join(n.bin, "kube-proxy"), "--config="+w("kube-proxy.yaml"))

	n.waitFor(3*time.Minute, "the node is Ready", func() (bool, string) {
		out, err := n.kubectl("get", "node", nodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return err == nil && out == "True", out
	})
	n.t.Logf("node Ready %.1f s after the start", time.Since(start).Seconds())
}

// kubectl runs the cache's kubectl in the node, against its API server.
func (n *node) kubectl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + filepath.Join(netns.Dir, n.ns), "--",
		filepath.Join(n.bin, "kubectl"), "--kubeconfig=" + n.path("kubeconfig")}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		return strings.TrimSpace(out.String() + errOut.String()), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, errOut.String())
	}
	return strings.TrimSpace(out.String()), nil
}

func (n *node) mustKubectl(args ...string) string {
	n.t.Helper()
	out, err := n.kubectl(args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// importImages builds and imports the images the node runs: grain's, from
// this tree by deploy/image, and a pause image (a static program that
// waits for SIGTERM) for the pods' sandboxes.
func (n *node) importImages() {
	n.t.Helper()
	repo, err := filepath.Abs("../..")
	if err != nil {
		n.t.Fatal(err)
	}
	arch := runtime.GOARCH
	n.write("pause/main.go", `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
`)
	n.write("pause/go.mod", "module pause\n\ngo 1.22\n")
	build := func(dir, out, pkg string) {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
		if b, err := cmd.CombinedOutput(); err != nil {
			n.t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	build(n.path("pause"), n.path("pause/pause"), ".")
	build(repo, n.path("grain"), "./cmd/grain")
	image := func(name, archive string, args ...string) {
		cmd := exec.Command("go", append([]string{"run", "./deploy/image", "-o", archive, "-name", name}, args...)...)
		cmd.Dir = repo
		if b, err := cmd.CombinedOutput(); err != nil {
			n.t.Fatalf("deploy/image %s: %v\n%s", name, err, b)
		}
		out, err := n.inNode("ctr", "-a", n.path("containerd/sock"), "-n", "k8s.io", "images", "import", archive).CombinedOutput()
		if err != nil {
			n.t.Fatalf("ctr images import %s: %v\n%s", archive, err, out)
		}
	}
	image("localhost/pause:grain-test", n.path("pause.tar"), "-path", "pause", "-cmd", "", "-file-caps=false", arch+"="+n.path("pause/pause"))
	image(grainImage, n.path("grain-image.tar"), "-version", "cluster-test", arch+"="+n.path("grain"))
}

// grainImage is the name the test gives grain's image (the manifests'
// ghcr.io/grain-ebpf/grain:latest, changed by the test's kustomization).
const grainImage = "localhost/grain:cluster-test"

// stop ends every component, newest first, kills what the pods left
// running and removes the kubelet's cgroups.
func (n *node) stop() {
	for i := len(n.procs) - 1; i >= 0; i-- {
		p := n.procs[i]
		if p.cmd.Process == nil {
			continue
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	// Containers and their shims outlive containerd: kill every process
	// in the kubelet's cgroups, then the shims that served this node.
	roots, _ := filepath.Glob("/sys/fs/cgroup/*" + n.cgroup)
	var dirs []string
	for _, root := range roots {
		filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
	}
	for range 3 {
		for _, dir := range dirs {
			b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				var pid int
				fmt.Sscan(f, &pid)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, c := range cmdlines {
			b, _ := os.ReadFile(c)
			if bytes.Contains(b, []byte("containerd-shim")) && bytes.Contains(b, []byte(n.path("containerd/sock"))) {
				var pid int
				fmt.Sscan(strings.Split(c, "/")[2], &pid)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Deepest first: a cgroup is removed once it has no children.
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i])
	}
	syscall.Unmount(n.mntns, syscall.MNT_DETACH)
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
