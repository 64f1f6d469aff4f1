//! Debian's kernel under qemu: finding it, and building initramfs archives around it.

use super::tool;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's kernel and what an initramfs around it needs.
#[derive(Debug)]
pub struct Kernel {
    /// The qemu path.
    pub qemu: PathBuf,
    /// The vmlinuz path.
    pub vmlinuz: PathBuf,
    /// The modules path.
    pub modules: PathBuf,
    /// The busybox path.
    pub busybox: PathBuf,
    /// The dmsetup path.
    pub dmsetup: PathBuf,
    /// The cpio path.
    pub cpio: PathBuf,
}

/// The newest kernel in /boot with its modules, and the tools; `None` (a visible skip)
/// when one is missing.
pub fn kernel() -> Option<Kernel> {
    let qemu = tool("qemu-system-x86_64", "qemu-system-x86")?;
    let busybox = tool("busybox", "busybox-static")?;
    let dmsetup = tool("dmsetup", "dmsetup")?;
    let cpio = tool("cpio", "cpio")?;
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    let Some(vmlinuz) = kernels.pop() else {
        // The package is what provides the kernel: report it as the missing tool.
        tool("/boot/vmlinuz-*", "linux-image-amd64");
        return None;
    };
    let version = vmlinuz
        .file_name()?
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let modules = PathBuf::from("/lib/modules").join(&version);
    if !modules.join("modules.dep").exists() {
        tool(&format!("/lib/modules/{version}"), "linux-image-amd64");
        return None;
    }
    Some(Kernel {
        qemu,
        vmlinuz,
        modules,
        busybox,
        dmsetup,
        cpio,
    })
}

/// The modules a guest needs to map a dm-verity device on a virtio disk (Debian builds them
/// as modules); a test adds what its root needs.
pub const VERITY_MODULES: [&str; 5] = [
    "virtio_pci",
    "virtio_blk",
    "dm-mod",
    "dm-bufio",
    "dm-verity",
];

/// Modules with their dependencies, dependencies first (modules.dep order).
pub fn module_order(modules: &Path, wanted: &[&str]) -> Vec<PathBuf> {
    let dep = fs::read_to_string(modules.join("modules.dep")).unwrap();
    let deps: Vec<(String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect();
    let find = |name: &str| {
        deps.iter().find(|(m, _)| {
            Path::new(m)
                .file_stem()
                .is_some_and(|s| s.to_string_lossy().replace('_', "-") == name.replace('_', "-"))
        })
    };
    let mut out: Vec<String> = Vec::new();
    fn add(m: &str, deps: &[(String, Vec<String>)], out: &mut Vec<String>) {
        if out.iter().any(|o| o == m) {
            return;
        }
        if let Some((_, d)) = deps.iter().find(|(x, _)| x == m) {
            // modules.dep lists dependencies so that the last must load first.
            for x in d.iter().rev() {
                add(x, deps, out);
            }
        }
        out.push(m.to_string());
    }
    for w in wanted {
        let (m, _) = find(w).unwrap_or_else(|| panic!("module {w} not in modules.dep"));
        add(m, &deps, &mut out);
    }
    out.into_iter().map(|m| modules.join(m)).collect()
}

/// The shared libraries `bin` loads (ldd).
pub fn shared_libraries(bin: &Path) -> BTreeSet<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// `root` as a newc cpio archive at `out`.
pub fn cpio_of(cpio: &Path, root: &Path, out: &Path) {
    let list: Vec<String> = walk(root)
        .into_iter()
        .map(|p| p.strip_prefix(root).unwrap().display().to_string())
        .collect();
    let mut child = super::spawn_with_input(
        Command::new(cpio)
            .args(["-o", "-H", "newc", "--quiet"])
            .current_dir(root)
            .stdout(fs::File::create(out).unwrap()),
        list.join("\n").as_bytes(),
    );
    assert!(child.wait().unwrap().success());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![dir.to_path_buf()];
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

/// Lay out an initramfs in `root`: busybox and dmsetup (with their libraries),
/// `extra` programs (path in the host, path in the archive; with their libraries), the
/// kernel modules `wanted` with their dependencies in load order (`/modules.order`),
/// and `init`.
pub fn populate_initramfs(
    k: &Kernel,
    root: &Path,
    extra: &[(&Path, &str)],
    wanted: &[&str],
    init: &str,
) {
    for d in [
        "bin",
        "sbin",
        "proc",
        "sys",
        "dev",
        "lib/modules",
        "tmp",
        "mnt",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let mut programs = vec![
        (k.busybox.as_path(), "bin/busybox"),
        (k.dmsetup.as_path(), "sbin/dmsetup"),
    ];
    programs.extend_from_slice(extra);
    for (from, to) in programs {
        let dest = root.join(to);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(from, &dest).unwrap();
        for lib in shared_libraries(from) {
            let dest = root.join(lib.strip_prefix("/").unwrap());
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(fs::canonicalize(&lib).unwrap(), &dest).unwrap();
        }
    }
    let mut order = String::new();
    for m in module_order(&k.modules, wanted) {
        let name = m.file_name().unwrap().to_string_lossy().to_string();
        fs::copy(&m, root.join("lib/modules").join(&name)).unwrap();
        writeln!(order, "{name}").unwrap();
    }
    fs::write(root.join("modules.order"), order).unwrap();
    fs::write(root.join("init"), init).unwrap();
    fs::set_permissions(
        root.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
}
