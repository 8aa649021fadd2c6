//! The guest image a sandbox boots, as its manifest describes it.
//!
//! `cargo xtask image` builds an image (a kernel and an initramfs that starts
//! the guest agent, and for the full image a root disk) and writes a
//! `manifest.json` beside it; Paddock reads that manifest to boot
//! sandboxes. Both ends use [`GuestImage`], so the writer and the reader
//! cannot disagree on a key. This crate links nothing of libvirt, so the
//! task runner can depend on it on a machine where libvirt is not installed
//! yet.
//!
//! # The manifest
//!
//! ```json
//! {
//!   "hash": "3f2c…",                         // names the image: a hash over every input
//!   "kernel": "/var/lib/paddock/images/3f2c…/vmlinux",   // PVH ELF, or a bzImage `vmlinuz`
//!   "initramfs": "/var/lib/paddock/images/3f2c…/initramfs.cpio",
//!   "cmdline": "console=ttyS0 panic=-1 quiet init_on_free=1 cryptomgr.notests …",
//!   "agent_serial_port": "org.paddock.agent.0",
//!   "agent_vsock_port": 1024,
//!   "root_disk": "/var/lib/paddock/images/full-…/rootfs.qcow2",   // the full image only
//!   "build": { … }                           // informational: what it was built from
//! }
//! ```
//!
//! Paths are absolute. Unknown keys are refused: a manifest from a newer
//! writer must not be half understood.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a guest image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The manifest cannot be read (missing: build it with `cargo xtask image`).
    #[error("Cannot read the image manifest {path}")]
    Read {
        /// The manifest's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not the JSON object it should be.
    #[error("Malformed image manifest {path}")]
    Malformed {
        /// The manifest's path.
        path: PathBuf,
        /// What the decoder found wrong, with its line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A file the manifest names does not exist.
    #[error("The image's {what} {path} is missing")]
    MissingFile {
        /// Which file (kernel, initramfs, root disk).
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// The manifest cannot be encoded (a path that is not UTF-8).
    #[error("Cannot encode the image manifest")]
    Encode {
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest cannot be written.
    #[error("Cannot write the image manifest {path}")]
    Write {
        /// The manifest's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A bootable guest image: a kernel and an initramfs that starts the agent,
/// and optionally a root disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestImage {
    /// Content hash over every input of the image; it names the image.
    pub hash: String,
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs with busybox, the kernel modules and the agent.
    pub initramfs: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    /// The virtio-serial port name the agent listens on.
    pub agent_serial_port: String,
    /// The vsock port the agent listens on.
    pub agent_vsock_port: u32,
    /// The full image's root disk (a qcow2 base; sandboxes boot from an
    /// overlay on it). `None` for the default image, whose initramfs is the
    /// whole root file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_disk: Option<PathBuf>,
    /// What the image was built from. Informational: nothing boots by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<ImageBuild>,
}

/// What an image was built from, for people reading the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBuild {
    /// The kernel's release (`uname -r` in the guest).
    pub kernel_version: String,
    /// The Debian kernel package, as `name=version`.
    pub kernel_package: String,
    /// The version of the Debian `busybox-static` package.
    pub busybox_version: String,
    /// The kernel modules in the initramfs, in load order.
    pub modules: Vec<String>,
    /// The size of the stripped static agent.
    pub agent_bytes: u64,
    /// Set for the full image: its root disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<FullImageBuild>,
}

/// What the full image's root disk was built from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullImageBuild {
    /// The hash of the default image whose kernel and initramfs it boots.
    pub base_image: String,
    /// The disk's size.
    pub root_disk_bytes: u64,
    /// The Debian release debootstrapped onto it.
    pub debian_suite: String,
    /// The packages installed beyond debootstrap's minimal base.
    pub debian_packages: Vec<String>,
}

impl GuestImage {
    /// Reads an image manifest and checks that the files it names exist.
    ///
    /// # Errors
    /// [`ImageError`] when the manifest is missing or malformed, or names a
    /// missing file.
    pub fn load(manifest: &Path) -> Result<Self, ImageError> {
        let text = std::fs::read_to_string(manifest).map_err(|source| ImageError::Read {
            path: manifest.to_owned(),
            source,
        })?;
        Self::parse(&text, manifest)
    }

    /// Parses manifest text and checks that the files it names exist;
    /// `path` is only for error messages.
    ///
    /// # Errors
    /// [`ImageError::Malformed`] or [`ImageError::MissingFile`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, ImageError> {
        let image: Self = serde_json::from_str(text).map_err(|source| ImageError::Malformed {
            path: path.to_owned(),
            source,
        })?;
        image.check_files()?;
        Ok(image)
    }

    /// Checks that the kernel, the initramfs and the root disk (if any)
    /// exist.
    ///
    /// # Errors
    /// [`ImageError::MissingFile`] naming the first that does not.
    pub fn check_files(&self) -> Result<(), ImageError> {
        let files = [
            Some(("kernel", &self.kernel)),
            Some(("initramfs", &self.initramfs)),
            self.root_disk.as_ref().map(|disk| ("root disk", disk)),
        ];
        for (what, file) in files.into_iter().flatten() {
            if !file.is_file() {
                return Err(ImageError::MissingFile {
                    what,
                    path: file.clone(),
                });
            }
        }
        Ok(())
    }

    /// The manifest's text: pretty JSON ending in a newline.
    ///
    /// # Errors
    /// [`ImageError::Encode`] when a path is not UTF-8 (JSON has no other
    /// way to carry it).
    pub fn to_json(&self) -> Result<String, ImageError> {
        serde_json::to_string_pretty(self)
            .map(|text| text + "\n")
            .map_err(|source| ImageError::Encode { source })
    }

    /// Writes the manifest to `path`.
    ///
    /// # Errors
    /// [`ImageError::Encode`] or [`ImageError::Write`].
    pub fn write(&self, path: &Path) -> Result<(), ImageError> {
        std::fs::write(path, self.to_json()?).map_err(|source| ImageError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn image(kernel: &Path, initramfs: &Path) -> GuestImage {
        GuestImage {
            hash: "abc".into(),
            kernel: kernel.to_owned(),
            initramfs: initramfs.to_owned(),
            cmdline: "console=ttyS0".into(),
            agent_serial_port: "org.paddock.agent.0".into(),
            agent_vsock_port: 1024,
            root_disk: None,
            build: None,
        }
    }

    /// An error and its sources, as one line.
    fn chain(err: &ImageError) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        text
    }

    #[test]
    fn a_manifest_with_its_files_parses() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (kernel, initramfs) = (dir.path().join("k"), dir.path().join("i"));
        std::fs::write(&kernel, b"k")?;
        std::fs::write(&initramfs, b"i")?;
        let image = GuestImage::parse(&image(&kernel, &initramfs).to_json()?, Path::new("m.json"))?;
        assert_eq!(image.hash, "abc");
        assert_eq!(image.kernel, kernel);
        assert_eq!(image.agent_vsock_port, 1024);
        Ok(())
    }

    #[test]
    fn what_the_writer_writes_the_reader_reads() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (kernel, initramfs, disk) = (
            dir.path().join("k"),
            dir.path().join("i"),
            dir.path().join("d"),
        );
        for file in [&kernel, &initramfs, &disk] {
            std::fs::write(file, b"x")?;
        }
        let mut written = image(&kernel, &initramfs);
        written.root_disk = Some(disk);
        written.build = Some(ImageBuild {
            kernel_version: "6.1.0-28-cloud-amd64".into(),
            kernel_package: "linux-image-6.1.0-28-cloud-amd64=6.1.119-1".into(),
            busybox_version: "1:1.35.0-4+b3".into(),
            modules: vec!["virtio_ring".into(), "virtio".into()],
            agent_bytes: 4_000_000,
            full: Some(FullImageBuild {
                base_image: "abc".into(),
                root_disk_bytes: 300 << 20,
                debian_suite: "bookworm".into(),
                debian_packages: vec!["python3".into()],
            }),
        });
        let manifest = dir.path().join("manifest.json");
        written.write(&manifest)?;
        assert_eq!(GuestImage::load(&manifest)?, written);
        Ok(())
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let path = Path::new("m.json");
        let err = GuestImage::parse("{", path).expect_err("must fail");
        assert!(matches!(err, ImageError::Malformed { .. }), "{err}");
        let err = GuestImage::parse(
            r#"{"hash": "a", "kernel": "/k", "initramfs": "/i", "cmdline": "",
                "agent_serial_port": "p"}"#,
            path,
        )
        .expect_err("must fail");
        assert!(
            chain(&err).contains("`agent_vsock_port`"),
            "{}",
            chain(&err)
        );
        let err = GuestImage::parse(
            r#"{"hash": "a", "kernel": "/k", "initramfs": "/i", "cmdline": "",
                "agent_serial_port": "p", "agent_vsock_port": 4294967296}"#,
            path,
        )
        .expect_err("a port beyond u32");
        assert!(matches!(err, ImageError::Malformed { .. }), "{err}");
        let err = GuestImage::parse(
            r#"{"hash": "a", "kernel": "/k", "initramfs": "/i", "cmdline": "",
                "agent_serial_port": "p", "agent_vsock_port": 1, "kernal": "/k"}"#,
            path,
        )
        .expect_err("an unknown key");
        assert!(chain(&err).contains("kernal"), "{}", chain(&err));
        let text = image(Path::new("/nonexistent/k"), Path::new("/nonexistent/i"))
            .to_json()
            .expect("UTF-8 paths");
        let err = GuestImage::parse(&text, path).expect_err("must fail");
        assert!(
            matches!(err, ImageError::MissingFile { what: "kernel", .. }),
            "{err}"
        );
        let err = GuestImage::load(Path::new("/nonexistent/m.json")).expect_err("must fail");
        assert!(matches!(err, ImageError::Read { .. }), "{err}");
    }
}
