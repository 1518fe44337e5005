package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

// buildImage builds grain for amd64 and arm64, as make image does, and
// writes the archive; once per test binary.
var buildImage = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "grain-image-")
	if err != nil {
		return "", err
	}
	var args []string
	for _, arch := range []string{"amd64", "arm64"} {
		bin := filepath.Join(dir, "grain-"+arch)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/grain")
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOARCH="+arch)
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", &buildError{err, string(out)}
		}
		args = append(args, arch+"="+bin)
	}
	out := filepath.Join(dir, "grain-image.tar")
	o := options{name: testImage, version: "test", path: "grain", cmd: "run --policies /etc/grain/policies", fileCaps: true, created: time.Unix(0, 0).UTC()}
	return out, write(out, o, args)
})

const testImage = "localhost/grain:image-test"

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

func imagePath(t *testing.T) string {
	t.Helper()
	vmtest.HostOnly(t, "building and loading images involves no kernel feature")
	p, err := buildImage()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// readTar maps each regular file of a tar stream to its header and bytes.
func readTar(t *testing.T, r io.Reader) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, data
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name], data[h.Name] = h, b
	}
}

func blobOf(t *testing.T, files map[string][]byte, digest string) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")]
	if !ok {
		t.Fatalf("the archive lacks blob %s", digest)
	}
	return b
}

// The archive is an OCI layout whose index names one image per
// architecture; each holds the static binary alone, with the file
// capabilities a non-root container needs, and nothing else. Docker's
// manifest.json names the first. Two builds give the same bytes.
func TestImageArchive(t *testing.T) {
	path := imagePath(t)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image archive: %d bytes (%.1f MiB)", len(raw), float64(len(raw))/(1<<20))
	_, files := readTar(t, bytes.NewReader(raw))
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout: %q", files["oci-layout"])
	}
	var top struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &top); err != nil || len(top.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	if d := top.Manifests[0]; d.MediaType != mediaIndex || d.Annotations["io.containerd.image.name"] != testImage || d.Annotations["org.opencontainers.image.ref.name"] != "image-test" {
		t.Errorf("index.json's entry: %+v", d)
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(blobOf(t, files, top.Manifests[0].Digest), &index); err != nil {
		t.Fatal(err)
	}
	var archs []string
	for _, m := range index.Manifests {
		archs = append(archs, m.Platform.Architecture+"/"+m.Platform.OS)
		var manifest struct {
			Config descriptor   `json:"config"`
			Layers []descriptor `json:"layers"`
		}
		if err := json.Unmarshal(blobOf(t, files, m.Digest), &manifest); err != nil || len(manifest.Layers) != 1 {
			t.Fatalf("%s manifest: %v", m.Platform.Architecture, err)
		}
		var config struct {
			Architecture string `json:"architecture"`
			Config       struct {
				Entrypoint []string
				Cmd        []string
			} `json:"config"`
		}
		if err := json.Unmarshal(blobOf(t, files, manifest.Config.Digest), &config); err != nil {
			t.Fatal(err)
		}
		if config.Architecture != m.Platform.Architecture || strings.Join(config.Config.Entrypoint, " ") != "/grain" {
			t.Errorf("%s config: %+v", m.Platform.Architecture, config)
		}
		zr, err := gzip.NewReader(bytes.NewReader(blobOf(t, files, manifest.Layers[0].Digest)))
		if err != nil {
			t.Fatal(err)
		}
		hdrs, layer := readTar(t, zr)
		if len(hdrs) != 1 || hdrs["grain"] == nil {
			t.Fatalf("%s layer holds %d files, want grain alone", m.Platform.Architecture, len(hdrs))
		}
		if err := checkStatic(layer["grain"], m.Platform.Architecture); err != nil {
			t.Errorf("%s binary: %v", m.Platform.Architecture, err)
		}
		caps := []byte(hdrs["grain"].PAXRecords["SCHILY.xattr.security.capability"])
		if len(caps) != 20 {
			t.Fatalf("%s binary has no file capabilities", m.Platform.Architecture)
		}
		magic := binary.LittleEndian.Uint32(caps)
		permitted := uint64(binary.LittleEndian.Uint32(caps[4:])) | uint64(binary.LittleEndian.Uint32(caps[12:]))<<32
		inheritable := binary.LittleEndian.Uint32(caps[8:]) | binary.LittleEndian.Uint32(caps[16:])
		if magic != 0x02000000 || permitted != 1<<capNetAdmin|1<<capPerfmon|1<<capBPF || inheritable != 0 {
			t.Errorf("%s file capabilities: magic %#x permitted %#x inheritable %#x: want revision 2 without the effective flag, CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN permitted", m.Platform.Architecture, magic, permitted, inheritable)
		}
	}
	if strings.Join(archs, ",") != "amd64/linux,arm64/linux" {
		t.Errorf("platforms %v, want amd64 and arm64", archs)
	}
	var docker []dockerManifest
	if err := json.Unmarshal(files["manifest.json"], &docker); err != nil || len(docker) != 1 || docker[0].RepoTags[0] != testImage {
		t.Errorf("manifest.json: %v %s", err, files["manifest.json"])
	}

	again := filepath.Join(t.TempDir(), "again.tar")
	var args []string
	for _, arch := range []string{"amd64", "arm64"} {
		args = append(args, arch+"="+filepath.Join(filepath.Dir(path), "grain-"+arch))
	}
	o := options{name: testImage, version: "test", path: "grain", cmd: "run --policies /etc/grain/policies", fileCaps: true, created: time.Unix(0, 0).UTC()}
	if err := write(again, o, args); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(again); !bytes.Equal(b, raw) {
		t.Error("two builds of the same binaries differ")
	}
}

// containerd (Debian's, a daemon of the test's own) imports the archive
// with ctr and runs the image: `grain version` prints the version.
func TestImageContainerdImportAndRun(t *testing.T) {
	path := imagePath(t)
	vmtest.RequireRoot(t)
	for _, tool := range []string{"containerd", "ctr", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: scripts/deps.sh installs containerd and runc", tool)
		}
	}
	dir, err := os.MkdirTemp("", "gimg-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "sock")
	config := filepath.Join(dir, "config.toml")
	os.WriteFile(config, []byte(`version = 2
root = "`+dir+`/root"
state = "`+dir+`/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "`+sock+`"
[ttrpc]
  address = "`+sock+`.ttrpc"
`), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log bytes.Buffer
	d := exec.CommandContext(ctx, "containerd", "--config", config)
	d.Stdout, d.Stderr = &log, &log
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		d.Process.Signal(os.Interrupt)
		d.Wait()
		exec.Command("umount", "-R", dir+"/root").Run()
		exec.Command("umount", "-R", dir+"/state").Run()
	}()
	ctr := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, "ctr", append([]string{"-a", sock, "-n", "grain-test"}, args...)...).CombinedOutput()
		return string(out), err
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if _, err := ctr("version"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not answer:\n%s", log.String())
		}
	}
	if out, err := ctr("images", "import", path); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	out, err := ctr("images", "ls", "-q")
	if err != nil || !strings.Contains(out, testImage) {
		t.Fatalf("ctr images ls after the import: %v\n%s", err, out)
	}
	out, err = ctr("run", "--rm", testImage, "grain-image-test", "/grain", "version")
	if err != nil || !strings.Contains(out, "grain ") {
		t.Fatalf("ctr run %s /grain version: %v\n%s", testImage, err, out)
	}
	t.Logf("ctr run: %s", strings.TrimSpace(out))
}

// podman loads the archive, as the image of the host's architecture.
func TestImagePodmanLoad(t *testing.T) {
	path := imagePath(t)
	vmtest.RequireRoot(t)
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatal("podman is missing: scripts/deps.sh installs it")
	}
	dir, err := os.MkdirTemp("", "gpod-")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		exec.Command("umount", "-R", dir).Run()
		os.RemoveAll(dir)
	}()
	// runc: crun refuses this machine's cgroup v1 hybrid; ulimits within
	// the machine's hard limits.
	conf := filepath.Join(dir, "containers.conf")
	os.WriteFile(conf, []byte("[engine]\nruntime = \"runc\"\n[containers]\ndefault_ulimits = [\"nofile=1024:1024\"]\n"), 0o600)
	podman := func(args ...string) (string, error) {
		cmd := exec.Command("podman", append([]string{"--root", dir + "/root", "--runroot", dir + "/run", "--storage-driver", "vfs"}, args...)...)
		cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+conf)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := podman("load", "-i", path); err != nil {
		t.Fatalf("podman load: %v\n%s", err, out)
	}
	out, err := podman("image", "inspect", "--format", "{{.Architecture}} {{.Config.Entrypoint}}", testImage)
	if err != nil || strings.TrimSpace(out) != runtime.GOARCH+" [/grain]" {
		t.Fatalf("podman image inspect: %v: %q, want %q", err, out, runtime.GOARCH+" [/grain]")
	}
}
