// Command image writes grain's container image: an OCI archive holding an
// index of one image per architecture, each a single layer with the static
// grain binary and nothing else (no base image). `make image` runs it.
//
//	go run ./deploy/image -o bin/grain-image.tar -name localhost/grain:v1 \
//	    amd64=bin/grain-linux-amd64 arm64=bin/grain-linux-arm64
//
// The archive is an OCI image layout (index.json, oci-layout, blobs/), which
// `ctr images import`, `podman load` and Docker 25+ read, plus the
// manifest.json of Docker's own archive format naming the first
// architecture's image, which older `docker load` reads. Its bytes depend
// only on the binaries and the flags: every timestamp is -epoch.
//
// The binary carries file capabilities (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN,
// permitted, not effective): a container running as a user other than root
// gets no capabilities at exec otherwise (Kubernetes sets no ambient
// capabilities), whatever its securityContext adds. Permitted-only, exec
// succeeds also where the bounding set lacks one of them (Docker's default
// has no CAP_BPF), and grain raises what it was given to effective itself.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type blob struct {
	digest string
	data   []byte
}

func newBlob(data []byte) blob {
	sum := sha256.Sum256(data)
	return blob{digest: "sha256:" + hex.EncodeToString(sum[:]), data: data}
}

func (b blob) descriptor(mediaType string) descriptor {
	return descriptor{MediaType: mediaType, Digest: b.digest, Size: int64(len(b.data))}
}

func (b blob) path() string { return "blobs/sha256/" + strings.TrimPrefix(b.digest, "sha256:") }

func main() {
	out := flag.String("o", "bin/grain-image.tar", "the OCI archive to write")
	name := flag.String("name", "localhost/grain:latest", "the image's name and tag (REPOSITORY:TAG)")
	version := flag.String("version", "", "grain's version, recorded as the image's version label")
	epoch := flag.Int64("epoch", 0, "timestamp of every file and of the image, in seconds since 1970 (reproducible builds)")
	o := options{}
	flag.StringVar(&o.path, "path", "grain", "the binary's path in the image, its entrypoint")
	flag.StringVar(&o.cmd, "cmd", "run --policies /etc/grain/policies", "the image's default arguments, space-separated")
	flag.BoolVar(&o.fileCaps, "file-caps", true, "give the binary grain's file capabilities")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: image [flags] ARCH=BINARY...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	o.name, o.version, o.created = *name, *version, time.Unix(*epoch, 0).UTC()
	if err := write(*out, o, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

// options are what the flags set (the tests build other images with them,
// such as a pause image).
type options struct {
	name, version, path, cmd string
	fileCaps                 bool
	created                  time.Time
}

func write(out string, o options, binaries []string) error {
	name, version, created := o.name, o.version, o.created
	repo, tag, ok := strings.Cut(name, ":")
	if !ok || strings.Contains(tag, "/") || repo == "" || tag == "" {
		return fmt.Errorf("-name %q: want REPOSITORY:TAG, e.g. localhost/grain:v1", name)
	}
	var blobs []blob
	var manifests []descriptor
	var docker []dockerManifest
	for _, arg := range binaries {
		arch, bin, ok := strings.Cut(arg, "=")
		if !ok || arch == "" || bin == "" {
			return fmt.Errorf("argument %q: want ARCH=BINARY, e.g. amd64=bin/grain-linux-amd64", arg)
		}
		exe, err := os.ReadFile(bin)
		if err != nil {
			return fmt.Errorf("read the %s binary: %w", arch, err)
		}
		if err := checkStatic(exe, arch); err != nil {
			return fmt.Errorf("%s: %w", bin, err)
		}
		layerTar, err := layer(exe, o.path, o.fileCaps, created)
		if err != nil {
			return err
		}
		gz, err := gzipped(layerTar)
		if err != nil {
			return err
		}
		layerBlob := newBlob(gz)
		diffID := sha256.Sum256(layerTar)
		config := map[string]any{
			"created":      created.Format(time.RFC3339),
			"architecture": arch,
			"os":           "linux",
			"config": map[string]any{
				"Entrypoint": []string{"/" + o.path},
				"Cmd":        strings.Fields(o.cmd),
				"Labels": map[string]string{
					"org.opencontainers.image.title":   o.path,
					"org.opencontainers.image.version": version,
					"org.opencontainers.image.source":  "https://github.com/grain-ebpf/grain",
				},
			},
			"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diffID[:])}},
			"history": []map[string]any{{
				"created":    created.Format(time.RFC3339),
				"created_by": "grain deploy/image: the static grain binary, no base image",
			}},
		}
		configBlob, err := jsonBlob(config)
		if err != nil {
			return err
		}
		manifest, err := jsonBlob(map[string]any{
			"schemaVersion": 2,
			"mediaType":     mediaManifest,
			"config":        configBlob.descriptor(mediaConfig),
			"layers":        []descriptor{layerBlob.descriptor(mediaLayer)},
		})
		if err != nil {
			return err
		}
		d := manifest.descriptor(mediaManifest)
		d.Platform = &platform{Architecture: arch, OS: "linux"}
		manifests = append(manifests, d)
		blobs = append(blobs, layerBlob, configBlob, manifest)
		if len(docker) == 0 {
			docker = append(docker, dockerManifest{Config: configBlob.path(), RepoTags: []string{name}, Layers: []string{layerBlob.path()}})
		}
	}
	index, err := jsonBlob(map[string]any{"schemaVersion": 2, "mediaType": mediaIndex, "manifests": manifests})
	if err != nil {
		return err
	}
	blobs = append(blobs, index)
	top := index.descriptor(mediaIndex)
	top.Annotations = map[string]string{
		"io.containerd.image.name":          name, // ctr import names the image by it
		"org.opencontainers.image.ref.name": tag,
	}
	indexJSON, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mediaIndex, "manifests": []descriptor{top}})
	if err != nil {
		return err
	}
	dockerJSON, err := json.Marshal(docker)
	if err != nil {
		return err
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", indexJSON},
		{"manifest.json", dockerJSON},
	}
	seen := map[string]bool{}
	dirs := []string{"blobs/", "blobs/sha256/"}
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: created, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	for _, b := range blobs {
		if seen[b.digest] {
			continue
		}
		seen[b.digest] = true
		files = append(files, struct {
			name string
			data []byte
		}{b.path(), b.data})
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: created, Format: tar.FormatPAX}); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// layer is the image's one layer, uncompressed: the binary, owned by root,
// with its file capabilities.
func layer(exe []byte, path string, fileCaps bool, created time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg, Name: path, Mode: 0o755, Size: int64(len(exe)),
		ModTime: created, Format: tar.FormatPAX,
	}
	if fileCaps {
		hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": string(fileCapabilities())}
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(exe); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Capability numbers (linux/capability.h).
const (
	capNetAdmin = 12
	capPerfmon  = 38
	capBPF      = 39
)

// fileCapabilities is the security.capability value (struct
// vfs_cap_data, revision 2) granting CAP_BPF, CAP_PERFMON and
// CAP_NET_ADMIN as permitted, without the effective flag.
func fileCapabilities() []byte {
	const vfsCapRevision2 = 0x02000000
	var permitted uint64 = 1<<capNetAdmin | 1<<capPerfmon | 1<<capBPF
	v := make([]byte, 20)
	binary.LittleEndian.PutUint32(v[0:], vfsCapRevision2)
	binary.LittleEndian.PutUint32(v[4:], uint32(permitted))      // permitted, low word
	binary.LittleEndian.PutUint32(v[8:], 0)                      // inheritable, low word
	binary.LittleEndian.PutUint32(v[12:], uint32(permitted>>32)) // permitted, high word
	binary.LittleEndian.PutUint32(v[16:], 0)                     // inheritable, high word
	return v
}

// checkStatic refuses a binary that is not a static ELF executable of arch:
// the image has no libc or loader to run anything else.
func checkStatic(exe []byte, arch string) error {
	machines := map[string]uint16{"amd64": 62, "arm64": 183}
	want, ok := machines[arch]
	if !ok {
		return fmt.Errorf("architecture %q: want one of amd64, arm64", arch)
	}
	if len(exe) < 64 || !bytes.Equal(exe[:4], []byte("\x7fELF")) || exe[4] != 2 || exe[5] != 1 {
		return fmt.Errorf("not a 64-bit little-endian ELF executable")
	}
	if m := binary.LittleEndian.Uint16(exe[18:]); m != want {
		return fmt.Errorf("built for ELF machine %d, not %s (%d): build it with GOARCH=%s", m, arch, want, arch)
	}
	// A program header of type PT_INTERP names a dynamic loader.
	phoff := binary.LittleEndian.Uint64(exe[32:])
	phentsize := uint64(binary.LittleEndian.Uint16(exe[54:]))
	phnum := uint64(binary.LittleEndian.Uint16(exe[56:]))
	for i := range phnum {
		off := phoff + i*phentsize
		if off+4 > uint64(len(exe)) {
			return fmt.Errorf("truncated program headers")
		}
		if binary.LittleEndian.Uint32(exe[off:]) == 3 { // PT_INTERP
			return fmt.Errorf("dynamically linked (it names a loader): build it with CGO_ENABLED=0")
		}
	}
	return nil
}

func jsonBlob(v any) (blob, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return blob{}, err
	}
	return newBlob(b), nil
}

// gzipped compresses without a name or time in the header: the same layer
// gives the same digest.
func gzipped(data []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(zw, bytes.NewReader(data)); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
