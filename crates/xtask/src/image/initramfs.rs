//! The initramfs: a newc cpio archive of busybox, the kernel modules, the
//! agent and the root file system's files.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context as _, ensure};

use super::inputs::Inputs;
use super::kernel::Module;
use super::{BUSYBOX, QUERY_TIMEOUT};
use crate::shell::Cmd;

/// Busybox's applets as paths relative to `/` (`bin/sh`, `sbin/init`, ...).
pub(super) fn busybox_applets() -> anyhow::Result<Vec<String>> {
    let list = Cmd::new(BUSYBOX)
        .arg("--list-full")
        .timeout(QUERY_TIMEOUT)
        .read()
        .with_context(|| format!("{BUSYBOX} --list-full failed"))?;
    let applets: Vec<String> = list
        .lines()
        .map(|line| line.trim().trim_start_matches('/').to_owned())
        .filter(|line| !line.is_empty())
        .collect();
    ensure!(
        applets.iter().any(|a| a == "bin/sh") && applets.iter().any(|a| a == "sbin/init"),
        "{BUSYBOX} has no sh or init applet"
    );
    Ok(applets)
}

/// What goes into the initramfs besides [`Inputs`].
#[derive(Debug)]
pub(super) struct Contents<'a> {
    /// Busybox and the files of [`super::ROOTFS_DIR`].
    pub(super) inputs: &'a Inputs,
    /// The kernel release: the modules' directory name.
    pub(super) kernel_version: &'a str,
    /// The modules, in load order.
    pub(super) modules: &'a [Module],
    /// The stripped agent.
    pub(super) agent: &'a [u8],
    /// Busybox's applet paths (see [`busybox_applets`]).
    pub(super) applets: &'a [String],
}

/// Writes the (uncompressed) newc initramfs archive (layout: see the module
/// docs).
pub(super) fn write_initramfs(path: &Path, contents: &Contents<'_>) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file));

    for dir in [
        "proc", "sys", "dev", "run", "usr/bin", "usr/sbin", "var", "mnt",
    ] {
        cpio.dir(dir, 0o755)?;
    }
    cpio.dir("tmp", 0o1777)?;
    cpio.dir("root", 0o700)?;
    // The kernel opens /dev/console for init before anything is mounted.
    cpio.char_device("dev/console", 0o600, (5, 1))?;

    for file in &contents.inputs.rootfs {
        let mode = if file.executable { 0o755 } else { 0o644 };
        cpio.file(&file.path, mode, &file.contents)?;
    }
    cpio.file("usr/bin/paddock-agent", 0o755, contents.agent)?;

    let modules_dir = format!("lib/modules/{}", contents.kernel_version);
    let mut order = String::from("# Loaded in this order by /etc/init.d/rcS; written by xtask.\n");
    for module in contents.modules {
        cpio.file(
            &format!("{modules_dir}/{}.ko", module.name),
            0o644,
            &module.contents,
        )?;
        order.push_str(&module.name);
        order.push('\n');
    }
    cpio.file("etc/paddock/modules", 0o644, order.as_bytes())?;

    cpio.file("bin/busybox", 0o755, &contents.inputs.busybox)?;
    // The kernel runs /init: the script from the rootfs directory (see it).
    for applet in contents.applets {
        // Files of the image win over applets of the same path.
        if !cpio.has(applet) {
            cpio.symlink(applet, "/bin/busybox")?;
        }
    }

    cpio.finish()?.flush().context("writing")
}

/// A writer of `newc` cpio archives (the initramfs format; see the kernel's
/// `Documentation/driver-api/early-userspace/buffer-format.rst`). Every
/// entry belongs to root and has mtime 0, so equal inputs give equal
/// archives; parent directories are added as needed.
#[derive(Debug)]
pub(super) struct Cpio<W: Write> {
    /// Where the archive goes.
    pub(super) out: W,
    /// Bytes written so far (entries are 4-byte aligned).
    pub(super) offset: u64,
    /// The inode number of the next entry (each entry has its own).
    pub(super) next_inode: u32,
    /// Paths written so far.
    pub(super) paths: BTreeSet<String>,
}

/// File type bits of a cpio `mode`: a directory.
pub(super) const S_IFDIR: u32 = 0o040_000;

/// A regular file.
pub(super) const S_IFREG: u32 = 0o100_000;

/// A symbolic link (its data is the target).
pub(super) const S_IFLNK: u32 = 0o120_000;

/// A character device (its `rdev` fields name it).
pub(super) const S_IFCHR: u32 = 0o020_000;

impl<W: Write> Cpio<W> {
    /// An empty archive written to `out`.
    pub(super) fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            next_inode: 1,
            paths: BTreeSet::new(),
        }
    }

    /// Whether `path` has been written.
    pub(super) fn has(&self, path: &str) -> bool {
        self.paths.contains(path)
    }

    /// A directory (and its missing parents, with mode 0755).
    pub(super) fn dir(&mut self, path: &str, permissions: u32) -> anyhow::Result<()> {
        self.parents(path)?;
        if !self.has(path) {
            self.entry(path, S_IFDIR | permissions, 2, (0, 0), &[])?;
        }
        Ok(())
    }

    /// A regular file.
    pub(super) fn file(
        &mut self,
        path: &str,
        permissions: u32,
        contents: &[u8],
    ) -> anyhow::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFREG | permissions, 1, (0, 0), contents)
    }

    /// A symbolic link to `target`.
    pub(super) fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node.
    fn char_device(
        &mut self,
        path: &str,
        permissions: u32,
        device: (u32, u32),
    ) -> anyhow::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFCHR | permissions, 1, device, &[])
    }

    /// Adds the directories above `path` that are not there yet (0755).
    pub(super) fn parents(&mut self, path: &str) -> anyhow::Result<()> {
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            let parent = &path[..end];
            if !self.has(parent) {
                self.entry(parent, S_IFDIR | 0o755, 2, (0, 0), &[])?;
            }
            end += 1;
        }
        Ok(())
    }

    /// Adds one entry (a new inode) and remembers its path; a path may
    /// appear once only.
    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        links: u32,
        device: (u32, u32),
        data: &[u8],
    ) -> anyhow::Result<()> {
        ensure!(
            path != "TRAILER!!!" && self.paths.insert(path.to_owned()),
            "the initramfs would hold {path} twice"
        );
        let inode = self.next_inode;
        self.next_inode += 1;
        self.record(path, [inode, mode, 0, 0, links, 0], device, data)
    }

    /// Writes one header (`fields`: inode, mode, uid, gid, links, mtime),
    /// the name and the data, each padded to 4 bytes.
    fn record(
        &mut self,
        name: &str,
        fields: [u32; 6],
        device: (u32, u32),
        data: &[u8],
    ) -> anyhow::Result<()> {
        let size = u32::try_from(data.len())
            .with_context(|| format!("{name} is too large for a cpio archive"))?;
        let name_size = u32::try_from(name.len() + 1).context("name too long")?;
        let [inode, mode, uid, gid, links, mtime] = fields;
        // magic, then inode, mode, uid, gid, nlink, mtime, filesize,
        // devmajor, devminor, rdevmajor, rdevminor, namesize, check.
        let header = format!(
            "070701{inode:08X}{mode:08X}{uid:08X}{gid:08X}{links:08X}{mtime:08X}{size:08X}\
             {:08X}{:08X}{:08X}{:08X}{name_size:08X}{:08X}",
            0, 0, device.0, device.1, 0
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    /// Writes raw bytes, counting them.
    pub(super) fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.out
            .write_all(bytes)
            .context("writing the cpio archive")?;
        self.offset += u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        Ok(())
    }

    /// Writes zeros up to the next multiple of 4 bytes.
    pub(super) fn pad(&mut self) -> anyhow::Result<()> {
        const ZEROS: [u8; 3] = [0; 3];
        let padding = (4 - self.offset % 4) % 4;
        self.write(&ZEROS[..usize::try_from(padding).unwrap_or(0)])
    }

    /// Writes the trailer and returns the writer.
    pub(super) fn finish(mut self) -> anyhow::Result<W> {
        self.record("TRAILER!!!", [0, 0, 0, 0, 1, 0], (0, 0), &[])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_parents_come_first() -> anyhow::Result<()> {
        let mut cpio = Cpio::new(Vec::new());
        cpio.file("etc/paddock/x", 0o644, b"hello")?;
        cpio.symlink("bin/sh", "/bin/busybox")?;
        let archive = cpio.finish()?;
        assert_eq!(archive.len() % 4, 0);
        let text = String::from_utf8_lossy(&archive);
        let at = |name: &str| text.find(&format!("{name}\0")).unwrap_or(usize::MAX);
        assert!(at("etc") < at("etc/paddock"));
        assert!(at("etc/paddock") < at("etc/paddock/x"));
        assert!(at("etc/paddock/x") < at("bin/sh"));
        assert!(archive.ends_with(b"TRAILER!!!\0\0\0\0"));
        // Every header starts on a 4-byte boundary.
        for (offset, _) in text.match_indices("070701") {
            assert_eq!(offset % 4, 0, "header at {offset}");
        }
        Ok(())
    }
}
