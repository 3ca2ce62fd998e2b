package container

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// rootfs writes a root file system as a tar stream for `docker import`. It
// copies host files together with the symlinks on their way (/lib ->
// usr/lib on a merged-/usr host), so dynamically linked host programs find
// their loader and libraries at the same paths inside the image. Entries are
// written parents first and each path once. Not safe for concurrent use.
type rootfs struct {
	tw    *tar.Writer
	seen  map[string]bool // cleaned image paths without the leading slash
	mtime time.Time
}

func newRootfs(w io.Writer) *rootfs {
	return &rootfs{tw: tar.NewWriter(w), seen: make(map[string]bool), mtime: time.Unix(0, 0)}
}

// close flushes the tar trailer.
func (r *rootfs) close() error { return r.tw.Close() }

func rel(p string) string { return strings.TrimPrefix(path.Clean("/"+p), "/") }

func (r *rootfs) header(h *tar.Header) error {
	name := rel(h.Name)
	if name == "" || r.seen[name] {
		return nil
	}
	if err := r.parents(name); err != nil {
		return err
	}
	r.seen[name] = true
	h.Name = name
	if h.Typeflag == tar.TypeDir {
		h.Name += "/"
	}
	h.ModTime = r.mtime
	h.Format = tar.FormatPAX
	return r.tw.WriteHeader(h)
}

// parents adds missing parent directories of name (root-owned, 0755).
func (r *rootfs) parents(name string) error {
	dir := path.Dir(name)
	if dir == "." || r.seen[dir] {
		return nil
	}
	return r.dir(dir, 0o755, 0, 0)
}

func (r *rootfs) dir(name string, mode int64, uid, gid int) error {
	return r.header(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: gid})
}

func (r *rootfs) file(name string, data []byte, mode int64) error {
	if r.seen[rel(name)] {
		return nil
	}
	if err := r.header(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}); err != nil {
		return err
	}
	_, err := r.tw.Write(data)
	return err
}

func (r *rootfs) symlink(name, target string) error {
	return r.header(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777})
}

// hostFile copies the host file, symlink or directory p to the same path,
// following every symlink on the way and copying its target too. skip, if
// not nil, prunes directory walks (it sees host paths).
func (r *rootfs) hostFile(p string, skip func(p string, d fs.DirEntry) bool) error {
	return r.hostFileDepth(path.Clean(p), skip, 0)
}

func (r *rootfs) hostFileDepth(p string, skip func(string, fs.DirEntry) bool, depth int) error {
	if depth > 40 {
		return fmt.Errorf("rootfs: too many symlinks resolving %s", p)
	}
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := "/"
	for i, part := range parts {
		next := path.Join(cur, part)
		fi, err := os.Lstat(next)
		if err != nil {
			return err
		}
		last := i == len(parts)-1
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(next)
			if err != nil {
				return err
			}
			if err := r.symlink(next, target); err != nil {
				return err
			}
			resolved := target
			if !path.IsAbs(target) {
				resolved = path.Join(cur, target)
			}
			resolved = path.Join(append([]string{resolved}, parts[i+1:]...)...)
			return r.hostFileDepth(resolved, skip, depth+1)
		case fi.IsDir() && !last:
			if err := r.dir(next, int64(fi.Mode().Perm()), 0, 0); err != nil {
				return err
			}
		case fi.IsDir():
			return r.hostTree(next, skip, depth)
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(next)
			if err != nil {
				return err
			}
			return r.file(next, data, int64(fi.Mode().Perm()))
		default:
			return fmt.Errorf("rootfs: %s: unsupported file type %v", next, fi.Mode().Type())
		}
		cur = next
	}
	return nil
}

// hostTree copies the directory root recursively; symlinks inside it are
// copied as symlinks and their targets copied as well.
func (r *rootfs) hostTree(root string, skip func(string, fs.DirEntry) bool, depth int) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if skip != nil && p != root && skip(p, d) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return r.dir(p, int64(fi.Mode().Perm()), 0, 0)
		case fi.Mode()&fs.ModeSymlink != 0:
			if r.seen[rel(p)] {
				return nil
			}
			return r.hostFileDepth(p, skip, depth+1)
		case fi.Mode().IsRegular():
			if r.seen[rel(p)] {
				return nil
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return r.file(p, data, int64(fi.Mode().Perm()))
		}
		return nil
	})
}

// sharedLibs returns the absolute paths of the shared libraries (and the
// program interpreter) that ldd reports for the ELF files among files.
// Non-ELF and static files contribute nothing.
func sharedLibs(files []string) ([]string, error) {
	set := make(map[string]bool)
	for _, f := range files {
		if !dynamicELF(f) {
			continue
		}
		out, err := exec.Command("ldd", f).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %v", f, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "not found") {
				return nil, fmt.Errorf("ldd %s: %s", f, strings.TrimSpace(line))
			}
			for _, field := range strings.Fields(line) {
				if strings.HasPrefix(field, "/") {
					set[field] = true
				}
			}
		}
	}
	libs := make([]string, 0, len(set))
	for l := range set {
		libs = append(libs, l)
	}
	sort.Strings(libs)
	return libs, nil
}

// dynamicELF reports whether f is an ELF file that needs shared libraries.
func dynamicELF(f string) bool {
	ef, err := elf.Open(f)
	if err != nil {
		return false
	}
	defer ef.Close()
	libs, err := ef.ImportedLibraries()
	return err == nil && len(libs) > 0
}

// staticELF reports whether f is an ELF file that needs no shared libraries.
func staticELF(f string) bool {
	ef, err := elf.Open(f)
	if err != nil {
		return false
	}
	defer ef.Close()
	libs, err := ef.ImportedLibraries()
	return err == nil && len(libs) == 0
}

// busyboxApplets lists the applets of the host's busybox binary.
func busyboxApplets(busybox string) ([]string, error) {
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %v", busybox, err)
	}
	return strings.Fields(string(bytes.TrimSpace(out))), nil
}
