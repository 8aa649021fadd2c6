//! The guest kernel: its Debian package, found through apt, downloaded
//! and unpacked, and the modules the guest loads from it, in order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};

use super::{DOWNLOAD_TIMEOUT, KERNEL_META_PACKAGE, MODULES, QUERY_TIMEOUT, TOOL_TIMEOUT};
use crate::host;
use crate::shell::Cmd;

/// The Debian package the guest kernel comes from.
#[derive(Debug)]
pub(super) struct KernelPackage {
    /// E.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub(super) name: String,
    /// The Debian version, e.g. `6.1.192-2`.
    pub(super) version: String,
    /// The Debian architecture, e.g. `amd64`.
    pub(super) architecture: String,
}

/// Finds the kernel package `linux-image-cloud-amd64` depends on, with its
/// candidate version. Refreshes apt's lists once when apt does not know the
/// package (a fresh machine) and this runs as root.
pub(super) fn resolve_kernel_package() -> anyhow::Result<KernelPackage> {
    // apt-cache can take a second per call (hosts without a package cache
    // file): the meta package's stanza names the exact version it wants.
    let stanza = match package_stanza(KERNEL_META_PACKAGE) {
        Ok(stanza) => stanza,
        Err(err) if host::is_root() => {
            eprintln!("xtask: {err:#}; refreshing apt's package lists");
            host::apt_update()?;
            package_stanza(KERNEL_META_PACKAGE)?
        }
        Err(err) => return Err(err.context("as root, run `apt-get update` and try again")),
    };
    let architecture = stanza_field(&stanza, "Architecture")
        .with_context(|| format!("apt-cache show {KERNEL_META_PACKAGE} names no architecture"))?;
    let depends = stanza_field(&stanza, "Depends").unwrap_or_default();
    let (name, version) = depends
        .split([',', '|'])
        .map(str::trim)
        .find(|dependency| dependency.starts_with("linux-image-"))
        .map(parse_dependency)
        .with_context(|| {
            format!("apt knows no linux-image-* dependency of {KERNEL_META_PACKAGE}")
        })?;
    let version = match version {
        Some(version) => version,
        None => {
            let stanza = package_stanza(&name)?;
            stanza_field(&stanza, "Version")
                .with_context(|| format!("apt-cache show {name} names no version"))?
        }
    };
    Ok(KernelPackage {
        name,
        version,
        architecture,
    })
}

/// `apt-cache show` of the candidate version of `package`.
pub(super) fn package_stanza(package: &str) -> anyhow::Result<String> {
    Cmd::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .timeout(QUERY_TIMEOUT)
        .read()
        .with_context(|| format!("apt-cache show {package} failed"))
}

/// The value of `key` in a Debian control stanza.
pub(super) fn stanza_field(stanza: &str, key: &str) -> Option<String> {
    stanza
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
}

/// `name (= version)` or `name` (any other relation counts as none).
pub(super) fn parse_dependency(dependency: &str) -> (String, Option<String>) {
    let (name, relation) = dependency
        .split_once('(')
        .map_or((dependency, ""), |(name, rest)| (name, rest));
    let version = relation
        .trim_end_matches(')')
        .trim()
        .strip_prefix('=')
        .filter(|version| !version.starts_with('='))
        .map(|version| version.trim().to_owned());
    (name.trim().to_owned(), version)
}

/// Puts a kernel file at `out/<name>` (`vmlinuz` or `vmlinux`) as a hard
/// link to a copy in `cache`: images that differ only in their initramfs
/// share one kernel file.
pub(super) fn link_kernel(
    kernel: &Path,
    package: &KernelPackage,
    cache: &Path,
    out: &Path,
    name: &str,
) -> anyhow::Result<()> {
    let cached = cache.join(format!(
        "{}_{}_{}.{name}",
        package.name,
        package.version.replace(':', "%3a"),
        package.architecture
    ));
    if !cached.is_file() {
        std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
        let partial = cached.with_extension(format!("partial-{}", std::process::id()));
        std::fs::copy(kernel, &partial)
            .and_then(|_| std::fs::rename(&partial, &cached))
            .with_context(|| format!("copying {} to {}", kernel.display(), cached.display()))?;
    }
    let target = out.join(name);
    std::fs::hard_link(&cached, &target)
        .or_else(|_| std::fs::copy(&cached, &target).map(|_| ()))
        .with_context(|| format!("linking {} to {}", cached.display(), target.display()))
}

/// The uncompressed kernel (an ELF `vmlinux`) inside a bzImage, for a
/// direct PVH boot: QEMU jumps to its 32-bit PVH entry point, so the
/// guest neither decompresses the kernel (about 14 MB of LZ4 into 53 MB,
/// slow on an emulated CPU) nor runs the real-mode set-up. `None` (with
/// the reason) when the payload's compression is one this build does not
/// know or the kernel has no PVH entry (`CONFIG_PVH`): the bzImage is then
/// booted as it is.
/// `work` holds the payload while it is decompressed.
pub(super) fn extract_pvh_vmlinux(
    bzimage: &[u8],
    work: &Path,
) -> anyhow::Result<Result<Vec<u8>, String>> {
    let Some(payload) = bzimage_payload(bzimage) else {
        return Ok(Err(
            "not a bzImage with a payload (boot protocol 2.08+)".into()
        ));
    };
    let Some(tool) = payload_compression(payload) else {
        return Ok(Err(format!(
            "unknown payload compression (magic {:02x?})",
            &payload[..payload.len().min(6)]
        )));
    };
    // The kernel's build appends the uncompressed size (4 bytes, little
    // endian) to the compressed stream; the tools call it trailing garbage.
    let Some((stream, size)) = payload
        .split_last_chunk::<4>()
        .map(|(stream, size)| (stream, u32::from_le_bytes(*size)))
    else {
        return Ok(Err("the payload is too short".into()));
    };
    let compressed = work.join("kernel-payload");
    std::fs::write(&compressed, stream)
        .with_context(|| format!("writing {}", compressed.display()))?;
    let vmlinux = Cmd::new(tool)
        .args(["--decompress", "--stdout"])
        .arg(&compressed)
        .timeout(TOOL_TIMEOUT)
        .read_bytes()
        .with_context(|| format!("decompressing the kernel with {tool} (is it installed?)"))?;
    ensure!(
        u32::try_from(vmlinux.len()).is_ok_and(|len| len == size),
        "the kernel decompressed to {} bytes, its header says {size}",
        vmlinux.len()
    );
    if !has_pvh_entry(&vmlinux) {
        return Ok(Err("the kernel has no PVH entry point (CONFIG_PVH)".into()));
    }
    Ok(Ok(vmlinux))
}

/// The compressed kernel of a bzImage: `payload_offset` and
/// `payload_length` of the set-up header (boot protocol 2.08 and later),
/// counted from the protected-mode code after the set-up sectors.
pub(super) fn bzimage_payload(image: &[u8]) -> Option<&[u8]> {
    let u32_at = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = image.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    };
    // "HdrS" and the protocol version.
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let version = u16::from_le_bytes(image.get(0x206..0x208)?.try_into().ok()?);
    if version < 0x0208 {
        return None;
    }
    let setup_sectors = match *image.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sectors + 1) * 512 + u32_at(0x248)?;
    let length = u32_at(0x24c)?;
    image.get(start..start.checked_add(length)?)
}

/// The tool that decompresses a kernel payload, by its magic.
pub(super) fn payload_compression(payload: &[u8]) -> Option<&'static str> {
    const MAGICS: [(&[u8], &str); 4] = [
        // The legacy LZ4 frame the kernel's build writes.
        (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
        (&[0x1f, 0x8b], "gzip"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
    ];
    MAGICS
        .iter()
        .find(|(magic, _)| payload.starts_with(magic))
        .map(|(_, tool)| *tool)
}

/// Whether an ELF kernel has the note QEMU boots through PVH: a `Xen` note
/// of type 18 (`XEN_ELFNOTE_PHYS32_ENTRY`). Reads the 64-bit little-endian
/// program headers of type `PT_NOTE`.
pub(super) fn has_pvh_entry(elf: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| {
        let value = u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?);
        usize::try_from(value).ok()
    };
    let notes = || -> Option<bool> {
        // ELF64 (class 2), little-endian (data 1).
        if elf.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let (phoff, phentsize, phnum) = (u64_at(0x20)?, usize::from(u16_at(0x36)?), u16_at(0x38)?);
        for index in 0..usize::from(phnum) {
            let header = phoff.checked_add(index.checked_mul(phentsize)?)?;
            if u32_at(header)? != PT_NOTE {
                continue;
            }
            let (offset, size) = (u64_at(header + 0x08)?, u64_at(header + 0x20)?);
            let mut at = offset;
            let end = offset.checked_add(size)?.min(elf.len());
            while at + 12 <= end {
                let name_size = usize::try_from(u32_at(at)?).ok()?;
                let desc_size = usize::try_from(u32_at(at + 4)?).ok()?;
                let kind = u32_at(at + 8)?;
                let name = elf.get(at + 12..at + 12 + name_size)?;
                if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
                    return Some(true);
                }
                at += 12 + name_size.next_multiple_of(4) + desc_size.next_multiple_of(4);
            }
        }
        Some(false)
    };
    notes().unwrap_or(false)
}

/// Downloads the kernel package into `cache` unless it is there, and returns
/// its path.
pub(super) fn fetch_kernel_package(
    package: &KernelPackage,
    cache: &Path,
) -> anyhow::Result<PathBuf> {
    // apt-get download's file name: an epoch's colon is escaped.
    let file = format!(
        "{}_{}_{}.deb",
        package.name,
        package.version.replace(':', "%3a"),
        package.architecture
    );
    let path = cache.join(&file);
    if path.is_file() {
        eprintln!("xtask: using the cached {}", path.display());
        return Ok(path);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    // Download into a directory of its own, so that an interrupted download
    // never looks like a cached package.
    let partial = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache)
        .with_context(|| format!("creating a download directory in {}", cache.display()))?;
    Cmd::new("apt-get")
        // Root's private directory is out of reach of apt's `_apt` sandbox
        // user; say so instead of letting apt warn.
        .args(["-o", "APT::Sandbox::User=root", "download"])
        .arg(format!("{}={}", package.name, package.version))
        .dir(partial.path())
        .timeout(DOWNLOAD_TIMEOUT)
        .run()
        .with_context(|| {
            format!(
                "downloading {} {} failed (stale package lists? run `apt-get update`)",
                package.name, package.version
            )
        })?;
    let downloaded = partial.path().join(&file);
    ensure!(
        downloaded.is_file(),
        "apt-get download did not write {file}"
    );
    std::fs::rename(&downloaded, &path)
        .with_context(|| format!("moving {file} into {}", cache.display()))?;
    Ok(path)
}

/// An unpacked kernel package.
#[derive(Debug)]
pub(super) struct KernelTree {
    /// `/boot/vmlinuz-<version>`.
    pub(super) vmlinuz: PathBuf,
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub(super) version: String,
    /// `/lib/modules/<version>`.
    pub(super) modules_dir: PathBuf,
}

/// A kernel module that goes into the image.
#[derive(Debug)]
pub(super) struct Module {
    /// Its name, with `_` for `-` (what `/etc/paddock/modules` lists).
    pub(super) name: String,
    /// The uncompressed `.ko`.
    pub(super) contents: Vec<u8>,
}

impl KernelTree {
    /// Finds the kernel and its modules in the unpacked package at `dir`.
    pub(super) fn open(dir: &Path) -> anyhow::Result<Self> {
        let modules_root = dir.join("lib/modules");
        let mut versions = std::fs::read_dir(&modules_root)
            .with_context(|| {
                format!(
                    "the kernel package has no {}",
                    Path::new("/lib/modules").display()
                )
            })?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading {}", modules_root.display()))?;
        let version = match versions.len() {
            1 => versions.remove(0),
            _ => {
                bail!("the kernel package should hold one /lib/modules/<version>, not {versions:?}")
            }
        };
        let vmlinuz = dir.join(format!("boot/vmlinuz-{version}"));
        ensure!(
            vmlinuz.is_file(),
            "the kernel package has no /boot/vmlinuz-{version}"
        );
        Ok(Self {
            vmlinuz,
            modules_dir: modules_root.join(&version),
            version,
        })
    }

    /// The modules of [`MODULES`] the package has as files, in order. Those
    /// the kernel has built in are skipped and so are, with a warning, those
    /// it has neither way; a module whose dependency would not be loaded
    /// before it is an error.
    pub(super) fn select_modules(&self) -> anyhow::Result<Vec<Module>> {
        let files = module_files(&self.modules_dir.join("kernel"))?;
        let builtin_list = self.modules_dir.join("modules.builtin");
        let builtin: BTreeSet<String> = std::fs::read_to_string(&builtin_list)
            .with_context(|| format!("reading {}", builtin_list.display()))?
            .lines()
            .filter_map(module_name)
            .collect();
        let mut selected: Vec<Module> = Vec::new();
        for wanted in MODULES {
            let name = wanted.replace('-', "_");
            let Some(path) = files.get(&name) else {
                if builtin.contains(&name) {
                    eprintln!("xtask: module {name} is built into the kernel");
                } else {
                    eprintln!(
                        "xtask: warning: module {name} is neither in the kernel package nor built in; left out"
                    );
                }
                continue;
            };
            let contents = read_module(path)?;
            for dependency in module_dependencies(&contents) {
                ensure!(
                    builtin.contains(&dependency) || selected.iter().any(|m| m.name == dependency),
                    "module {name} needs {dependency}, which MODULES does not load before it"
                );
            }
            selected.push(Module { name, contents });
        }
        Ok(selected)
    }
}

/// Every module file under `dir` by module name.
pub(super) fn module_files(dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .with_context(|| format!("reading {}", current.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading {}", current.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if let Some(name) = path.to_str().and_then(module_name) {
                files.insert(name, path);
            }
        }
    }
    Ok(files)
}

/// The module name of a path like `kernel/drivers/char/hw_random/virtio-rng.ko`
/// (also `.ko.xz`, `.ko.zst`, `.ko.gz`): `virtio_rng`.
pub(super) fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))?;
    Some(stem.replace('-', "_"))
}

/// Reads a module file, decompressed (the guest loads it with busybox's
/// `insmod`, and needs no decompressor that way).
pub(super) fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        return std::fs::read(path).with_context(|| format!("reading {name}"));
    };
    Cmd::new(tool)
        .args(["--decompress", "--stdout"])
        .arg(path)
        .timeout(TOOL_TIMEOUT)
        .read_bytes()
        .with_context(|| format!("decompressing {name} with {tool} (is it installed?)"))
}

/// The `depends=` entry of a module's `.modinfo` section, as module names.
pub(super) fn module_dependencies(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = module
        .windows(KEY.len())
        .position(|window| window == KEY)
        .map(|at| at + KEY.len())
    else {
        return Vec::new();
    };
    let rest = &module[start..];
    let value = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
    String::from_utf8_lossy(value)
        .split(',')
        .filter(|name| !name.is_empty())
        .map(|name| name.replace('-', "_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dependency_names_the_exact_version() {
        let stanza = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\n\
                      Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n";
        let depends = stanza_field(stanza, "Depends").unwrap_or_default();
        assert_eq!(
            parse_dependency(&depends),
            (
                "linux-image-6.1.0-56-cloud-amd64".to_owned(),
                Some("6.1.192-2".to_owned())
            )
        );
        assert_eq!(
            parse_dependency("linux-image-x (>= 1)"),
            ("linux-image-x".to_owned(), None)
        );
        assert_eq!(
            parse_dependency("linux-image-x"),
            ("linux-image-x".to_owned(), None)
        );
        assert_eq!(stanza_field(stanza, "Vers"), None);
    }

    #[test]
    fn module_names_ignore_directories_suffixes_and_dashes() {
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko").as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(
            module_name("a/virtio_net.ko.xz").as_deref(),
            Some("virtio_net")
        );
        assert_eq!(module_name("modules.builtin"), None);
    }

    #[test]
    fn dependencies_come_from_modinfo() {
        let module =
            b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring,net-failover\0intree=Y\0";
        assert_eq!(
            module_dependencies(module),
            ["virtio", "virtio_ring", "net_failover"]
        );
        assert!(module_dependencies(b"\0depends=\0").is_empty());
        assert!(module_dependencies(b"no modinfo").is_empty());
    }

    /// A bzImage header (protocol 2.15, one set-up sector) whose payload
    /// is `payload`, at `payload_offset` 16.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 2 * 512 + 16];
        image[0x1f1] = 1;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020f_u16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&16_u32.to_le_bytes());
        let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        image[0x24c..0x250].copy_from_slice(&length.to_le_bytes());
        image.extend_from_slice(payload);
        image
    }

    #[test]
    fn the_payload_is_found_from_the_setup_header() {
        let payload = [0x02, 0x21, 0x4c, 0x18, 1, 2, 3];
        let image = bzimage(&payload);
        assert_eq!(bzimage_payload(&image), Some(&payload[..]));
        assert_eq!(payload_compression(&payload), Some("lz4"));
        assert_eq!(
            payload_compression(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some("zstd")
        );
        assert_eq!(payload_compression(b"\x7fELF"), None);
        // No "HdrS", an old protocol, or a payload past the end: none.
        let mut bad = image.clone();
        bad[0x202] = b'X';
        assert_eq!(bzimage_payload(&bad), None);
        let mut old = image.clone();
        old[0x206..0x208].copy_from_slice(&0x0207_u16.to_le_bytes());
        assert_eq!(bzimage_payload(&old), None);
        assert_eq!(bzimage_payload(&image[..image.len() - 1]), None);
        assert_eq!(bzimage_payload(&[]), None);
    }

    /// A 64-bit ELF header and one `PT_NOTE` program header whose note is
    /// `(name, type)`.
    fn elf_with_note(name: &[u8], kind: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 0x40 + 0x38];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&0x40_u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&0x38_u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1_u16.to_le_bytes());
        let note_at = elf.len();
        let mut note = Vec::new();
        note.extend_from_slice(&u32::try_from(name.len()).unwrap_or(0).to_le_bytes());
        note.extend_from_slice(&4_u32.to_le_bytes());
        note.extend_from_slice(&kind.to_le_bytes());
        note.extend_from_slice(name);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        note.extend_from_slice(&0x0100_0000_u32.to_le_bytes());
        let header = 0x40;
        elf[header..header + 4].copy_from_slice(&4_u32.to_le_bytes());
        elf[header + 0x08..header + 0x10]
            .copy_from_slice(&u64::try_from(note_at).unwrap_or(0).to_le_bytes());
        elf[header + 0x20..header + 0x28]
            .copy_from_slice(&u64::try_from(note.len()).unwrap_or(0).to_le_bytes());
        elf.extend_from_slice(&note);
        elf
    }

    #[test]
    fn only_a_xen_phys32_entry_note_makes_a_pvh_kernel() {
        assert!(has_pvh_entry(&elf_with_note(b"Xen\0", 18)));
        assert!(!has_pvh_entry(&elf_with_note(b"Xen\0", 17)));
        assert!(!has_pvh_entry(&elf_with_note(b"GNU\0", 18)));
        let mut truncated = elf_with_note(b"Xen\0", 18);
        truncated.truncate(truncated.len() - 10);
        assert!(!has_pvh_entry(&truncated));
        assert!(!has_pvh_entry(b"not an elf at all"));
    }
}
