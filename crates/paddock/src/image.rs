//! The guest image a sandbox boots: what `cargo xtask image` writes to its
//! `manifest.json`.

use std::path::{Path, PathBuf};

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
    #[error("Malformed image manifest {path}: {problem}")]
    Malformed {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A file the manifest names does not exist.
    #[error("The image's {what} {path} is missing")]
    MissingFile {
        /// Which file (kernel, initramfs).
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
}

/// A bootable guest image: a kernel and an initramfs that starts the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub root_disk: Option<PathBuf>,
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

    /// Parses manifest text; `path` is only for error messages.
    ///
    /// # Errors
    /// [`ImageError::Malformed`] or [`ImageError::MissingFile`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, ImageError> {
        let malformed = |problem: String| ImageError::Malformed {
            path: path.to_owned(),
            problem,
        };
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        let text_field = |key: &str| {
            json.get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| malformed(format!("no string `{key}`")))
        };
        let vsock_port = json
            .get("agent_vsock_port")
            .and_then(serde_json::Value::as_u64)
            .and_then(|port| u32::try_from(port).ok())
            .ok_or_else(|| malformed("no port number `agent_vsock_port`".into()))?;
        let image = Self {
            hash: text_field("hash")?,
            kernel: text_field("kernel")?.into(),
            initramfs: text_field("initramfs")?.into(),
            cmdline: text_field("cmdline")?,
            agent_serial_port: text_field("agent_serial_port")?,
            agent_vsock_port: vsock_port,
            root_disk: match json.get("root_disk") {
                None => None,
                Some(value) => Some(
                    value
                        .as_str()
                        .map(PathBuf::from)
                        .ok_or_else(|| malformed("`root_disk` is not a path".into()))?,
                ),
            },
        };
        let files = [
            Some(("kernel", &image.kernel)),
            Some(("initramfs", &image.initramfs)),
            image.root_disk.as_ref().map(|disk| ("root disk", disk)),
        ];
        for (what, file) in files.into_iter().flatten() {
            if !file.is_file() {
                return Err(ImageError::MissingFile {
                    what,
                    path: file.clone(),
                });
            }
        }
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(kernel: &Path, initramfs: &Path) -> String {
        serde_json::json!({
            "hash": "abc",
            "kernel": kernel,
            "initramfs": initramfs,
            "cmdline": "console=ttyS0",
            "agent_serial_port": "org.paddock.agent.0",
            "agent_vsock_port": 1024,
        })
        .to_string()
    }

    #[test]
    fn a_manifest_with_its_files_parses() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (kernel, initramfs) = (dir.path().join("k"), dir.path().join("i"));
        std::fs::write(&kernel, b"k")?;
        std::fs::write(&initramfs, b"i")?;
        let image = GuestImage::parse(&manifest(&kernel, &initramfs), Path::new("m.json"))?;
        assert_eq!(image.hash, "abc");
        assert_eq!(image.kernel, kernel);
        assert_eq!(image.agent_vsock_port, 1024);
        Ok(())
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let path = Path::new("m.json");
        let err = GuestImage::parse("{", path).expect_err("must fail");
        assert!(matches!(err, ImageError::Malformed { .. }), "{err}");
        let err = GuestImage::parse(r#"{"hash": 1}"#, path).expect_err("must fail");
        assert!(err.to_string().contains("`agent_vsock_port`"), "{err}");
        let text = manifest(Path::new("/nonexistent/k"), Path::new("/nonexistent/i"));
        let err = GuestImage::parse(&text, path).expect_err("must fail");
        assert!(
            matches!(err, ImageError::MissingFile { what: "kernel", .. }),
            "{err}"
        );
        let err = GuestImage::load(Path::new("/nonexistent/m.json")).expect_err("must fail");
        assert!(matches!(err, ImageError::Read { .. }), "{err}");
    }
}
