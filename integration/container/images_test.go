package container

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// imageRev is part of every local image tag; bump it when a recipe below
// changes so that images cached on a machine are rebuilt.
const imageRev = "1"

//go:embed testdata/postgres-entrypoint.sh
var postgresEntrypoint []byte

// shortHash keys an image tag by everything its content depends on.
func shortHash(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s;", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// imageID returns the id of a local image, or "" if there is none.
func imageID(ctx context.Context, ref string) string {
	out, err := exec.CommandContext(ctx, "docker", "image", "inspect", "--format", "{{.Id}}", ref).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// importImage builds tag with `docker import` from the tree that fill writes,
// applying the Dockerfile instructions in changes.
func importImage(ctx context.Context, tag string, changes []string, fill func(*rootfs) error) error {
	pr, pw := io.Pipe()
	go func() {
		r := newRootfs(pw)
		err := fill(r)
		if err == nil {
			err = r.close()
		}
		pw.CloseWithError(err)
	}()
	args := []string{"import"}
	for _, c := range changes {
		args = append(args, "--change", c)
	}
	args = append(args, "-", tag)
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdin = pr
	out, err := cmd.CombinedOutput()
	pr.CloseWithError(io.ErrClosedPipe) // unblock the writer if docker quit early
	if err != nil {
		return fmt.Errorf("docker import %s: %v\n%s", tag, err, out)
	}
	return nil
}

// ensureImage imports tag unless it already exists, and logs what it did.
func ensureImage(ctx context.Context, t *testing.T, tag string, changes []string, fill func(*rootfs) error) {
	t.Helper()
	if imageID(ctx, tag) != "" {
		t.Logf("image %s: cached", tag)
		return
	}
	start := time.Now()
	if err := importImage(ctx, tag, changes, fill); err != nil {
		t.Fatal(err)
	}
	t.Logf("image %s: imported in %v", tag, time.Since(start).Round(time.Millisecond))
}

// hostBusybox finds a statically linked busybox on the host (Debian package
// busybox-static) and returns its resolved path.
func hostBusybox() (string, error) {
	p, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("busybox not found (apt-get install busybox-static)")
	}
	if p, err = filepath.EvalSymlinks(p); err != nil {
		return "", err
	}
	if !staticELF(p) {
		return "", fmt.Errorf("%s is not statically linked (apt-get install busybox-static)", p)
	}
	return p, nil
}

// addBusybox copies busybox to dir/busybox with a symlink per applet beside
// it, leaving alone any name that already exists.
func addBusybox(r *rootfs, busybox, dir string) error {
	data, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := r.file(dir+"/busybox", data, 0o755); err != nil {
		return err
	}
	applets, err := busyboxApplets(busybox)
	if err != nil {
		return err
	}
	for _, a := range applets {
		if err := r.symlink(dir+"/"+a, "busybox"); err != nil {
			return err
		}
	}
	return nil
}

// goEnv returns `go env NAME`.
func goEnv(name string) (string, error) {
	out, err := exec.Command("go", "env", name).Output()
	if err != nil {
		return "", fmt.Errorf("go env %s: %v", name, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// buildBaseLocalTag is the Dockerfile's default BUILD_IMAGE.
const buildBaseLocalTag = "tunnel-build-base:local"

// ensureBuildBase makes the Dockerfile's build-stage image from the host: the
// Go toolchain at its host GOROOT (without tests, docs and testdata), a static
// busybox for RUN's /bin/sh, and the CA bundle for the module proxy. It is
// tagged by Go version and recipe, and aliased as tunnel-build-base:local.
func ensureBuildBase(ctx context.Context, t *testing.T) string {
	t.Helper()
	goroot, err := goEnv("GOROOT")
	if err != nil {
		t.Fatal(err)
	}
	if goroot, err = filepath.EvalSymlinks(goroot); err != nil {
		t.Fatal(err)
	}
	goversion, err := goEnv("GOVERSION")
	if err != nil {
		t.Fatal(err)
	}
	busybox, err := hostBusybox()
	if err != nil {
		t.Fatal(err)
	}
	const caBundle = "/etc/ssl/certs/ca-certificates.crt"
	if _, err := os.Stat(caBundle); err != nil {
		t.Fatalf("CA bundle for the module proxy: %v (apt-get install ca-certificates)", err)
	}
	tag := "tunnel-build-base:" + goversion + "-" + shortHash(imageRev, goroot, goversion, busybox)
	skip := func(p string, d fs.DirEntry) bool {
		r, _ := filepath.Rel(goroot, p)
		switch r {
		case "test", "api", "doc", "misc", "pkg/obj":
			return true
		}
		return d.Name() == "testdata" || strings.HasSuffix(d.Name(), "_test.go")
	}
	changes := []string{
		"ENV PATH=" + goroot + "/bin:/go/bin:/usr/local/bin:/usr/bin:/bin",
		"ENV GOPATH=/go",
		"ENV GOTOOLCHAIN=local",
		"WORKDIR /",
	}
	ensureImage(ctx, t, tag, changes, func(r *rootfs) error {
		for _, d := range []struct {
			name string
			mode int64
		}{{"bin", 0o755}, {"usr/bin", 0o755}, {"usr/local/bin", 0o755}, {"etc", 0o755}, {"root", 0o700}, {"tmp", 0o1777}, {"go", 0o777}} {
			if err := r.dir(d.name, d.mode, 0, 0); err != nil {
				return err
			}
		}
		if err := addBusybox(r, busybox, "bin"); err != nil {
			return err
		}
		if err := r.file("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"), 0o644); err != nil {
			return err
		}
		if err := r.file("etc/group", []byte("root:x:0:\nnonroot:x:65532:\n"), 0o644); err != nil {
			return err
		}
		if err := r.hostFile(caBundle, nil); err != nil {
			return err
		}
		return r.hostFile(goroot, skip)
	})
	if out, err := exec.CommandContext(ctx, "docker", "tag", tag, buildBaseLocalTag).CombinedOutput(); err != nil {
		t.Fatalf("docker tag %s %s: %v\n%s", tag, buildBaseLocalTag, err, out)
	}
	return tag
}

// hostPostgres finds the newest PostgreSQL server installed from Debian's
// packages and returns its root (/usr/lib/postgresql/N) and major version.
func hostPostgres() (root, major string, err error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(matches) == 0 {
		return "", "", fmt.Errorf("no /usr/lib/postgresql/*/bin/postgres (apt-get install postgresql)")
	}
	version := func(m string) int {
		n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(m))))
		return n
	}
	sort.Slice(matches, func(i, j int) bool { return version(matches[i]) > version(matches[j]) })
	root = filepath.Dir(filepath.Dir(matches[0]))
	return root, filepath.Base(root), nil
}

const (
	postgresUID = 999
	postgresDir = "/var/lib/postgresql"
)

// ensurePostgres makes a PostgreSQL image from the host's Debian packages:
// the server and client programs, their shared libraries as ldd finds them,
// a static busybox for the entrypoint script, and
// testdata/postgres-entrypoint.sh, which mimics the official image's
// interface. It doubles as the application image (it has psql).
func ensurePostgres(ctx context.Context, t *testing.T) string {
	t.Helper()
	root, major, err := hostPostgres()
	if err != nil {
		t.Fatal(err)
	}
	share := "/usr/share/postgresql/" + major
	versionOut, err := exec.Command(root+"/bin/postgres", "--version").Output()
	if err != nil {
		t.Fatalf("postgres --version: %v", err)
	}
	version := regexp.MustCompile(`\d+(\.\d+)*`).FindString(string(versionOut))
	busybox, err := hostBusybox()
	if err != nil {
		t.Fatal(err)
	}
	tag := "tunnel-test-postgres:" + version + "-" + shortHash(imageRev, string(versionOut), root, busybox, string(postgresEntrypoint))

	// JIT (LLVM, over 100 MB with its libraries) stays out; jit=off.
	skip := func(p string, d fs.DirEntry) bool {
		return d.Name() == "bitcode" || strings.HasPrefix(d.Name(), "llvmjit")
	}
	var elfs []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root && skip(p, d) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			elfs = append(elfs, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	libs, err := sharedLibs(elfs)
	if err != nil {
		t.Fatal(err)
	}

	uid := strconv.Itoa(postgresUID)
	changes := []string{
		"ENV PATH=" + root + "/bin:/usr/local/bin:/usr/bin:/bin",
		"ENV PGDATA=" + postgresDir + "/data",
		"ENV TZ=UTC",
		"USER " + uid + ":" + uid,
		"WORKDIR " + postgresDir,
		`ENTRYPOINT ["docker-entrypoint.sh"]`,
		`CMD ["postgres"]`,
		"EXPOSE 5432",
	}
	ensureImage(ctx, t, tag, changes, func(r *rootfs) error {
		for _, d := range []struct {
			name     string
			mode     int64
			uid, gid int
		}{
			{"etc", 0o755, 0, 0},
			{"tmp", 0o1777, 0, 0},
			{"usr/local/bin", 0o755, 0, 0},
			{"run", 0o755, 0, 0},
			{"run/postgresql", 0o2775, postgresUID, postgresUID},
			{"var/lib/postgresql", 0o755, postgresUID, postgresUID},
			{"var/lib/postgresql/data", 0o700, postgresUID, postgresUID},
		} {
			if err := r.dir(d.name, d.mode, d.uid, d.gid); err != nil {
				return err
			}
		}
		if err := r.symlink("var/run", "../run"); err != nil {
			return err
		}
		passwd := fmt.Sprintf("root:x:0:0:root:/root:/bin/sh\npostgres:x:%d:%d:PostgreSQL administrator:%s:/bin/sh\n", postgresUID, postgresUID, postgresDir)
		group := fmt.Sprintf("root:x:0:\npostgres:x:%d:\n", postgresUID)
		if err := r.file("etc/passwd", []byte(passwd), 0o644); err != nil {
			return err
		}
		if err := r.file("etc/group", []byte(group), 0o644); err != nil {
			return err
		}
		if err := r.file("usr/local/bin/docker-entrypoint.sh", postgresEntrypoint, 0o755); err != nil {
			return err
		}
		for _, p := range append([]string{root, share, "/usr/share/zoneinfo/UTC", "/usr/share/zoneinfo/Etc"}, libs...) {
			if err := r.hostFile(p, skip); err != nil {
				return err
			}
		}
		// /bin/sh for initdb's popen and the entrypoint; /bin -> usr/bin
		// as on the (merged-/usr) host.
		bin := "bin"
		if target, err := os.Readlink("/bin"); err == nil {
			if err := r.symlink("bin", target); err != nil {
				return err
			}
			bin = rel(path.Join("/", target))
		}
		return addBusybox(r, busybox, bin)
	})
	return tag
}
