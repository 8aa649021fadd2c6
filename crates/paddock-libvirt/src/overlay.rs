//! qcow2 overlays on read-only base images, made with `qemu-img`.
//!
//! Every sandbox writes to its own overlay; the base image is only ever read.
//! The overlays are made with `qemu-img create -b` rather than libvirt's
//! storage API because the storage API needs a storage pool defined, started
//! and refreshed around every directory that holds overlays, and then runs
//! the very same `qemu-img` inside libvirtd; calling it directly needs only
//! the binary (Debian package `qemu-utils`), behaves the same with or
//! without a daemon (the test driver's volumes exist only in its memory),
//! and leaves an ordinary file that is removed by unlinking it.
//!
//! A disk holds a guest's data: every image made here gets mode
//! [`DISK_MODE`] (0640) once qemu-img wrote it, whatever the umask, so only
//! its owner and its group (QEMU's, in the directories `paddock` makes)
//! can read it. libvirt's DAC driver (`dynamic_ownership`) gives the
//! overlay to QEMU's user while its domain runs and gives it back when the
//! domain stops; backing images stay QEMU's user's after their first
//! domain. It changes owners, never modes.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use paddock_spec::OverlayDisk;
use tokio::process::Command;

/// How long `qemu-img create` may take (it writes a few KiB of metadata).
pub const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(30);

/// The mode of every image made here: read-write for its owner, readable
/// by its group, nothing for others.
pub const DISK_MODE: u32 = 0o640;

/// Why an overlay could not be created or removed.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The base path is relative; qemu-img would resolve it against the
    /// overlay's directory.
    #[error("The base image path {0:?} is not absolute")]
    RelativeBase(PathBuf),
    /// qemu-img could not be started.
    #[error("Could not run qemu-img (package qemu-utils)")]
    Spawn(#[source] io::Error),
    /// qemu-img did not finish in time; it was killed.
    #[error("qemu-img did not finish within {0:?}")]
    Timeout(Duration),
    /// qemu-img failed to create an image (a full disk shows here, with
    /// qemu-img's "No space left on device").
    #[error("qemu-img could not create {path:?} ({status}): {stderr}")]
    Failed {
        /// The image it was creating.
        path: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The new image's mode could not be set to [`DISK_MODE`]; it was
    /// removed again.
    #[error("Could not set the mode of the image {path:?}")]
    Mode {
        /// The image.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The overlay file could not be removed.
    #[error("Could not remove the overlay {path:?}")]
    Remove {
        /// The overlay.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Creates `disk.overlay` as an empty qcow2 overlay on `disk.base`, replacing
/// any file already there. The overlay has the base's virtual size.
///
/// # Errors
/// A relative base path, or qemu-img fails or times out.
pub async fn create_overlay(disk: &OverlayDisk) -> Result<(), OverlayError> {
    if disk.base.is_relative() {
        return Err(OverlayError::RelativeBase(disk.base.clone()));
    }
    let mut command = Command::new("qemu-img");
    command
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            disk.base_format.as_str(),
            "-b",
        ])
        .arg(&disk.base)
        .arg(&disk.overlay);
    run_qemu_img(command, &disk.overlay).await
}

/// Creates `path` as a blank qcow2 image of `size_mib` MiB, replacing any
/// file already there: a base for overlays that only hold guest state.
///
/// # Errors
/// qemu-img fails or times out.
pub async fn create_blank_qcow2(path: &Path, size_mib: u64) -> Result<(), OverlayError> {
    let mut command = Command::new("qemu-img");
    command
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(format!("{size_mib}M"));
    run_qemu_img(command, path).await
}

async fn run_qemu_img(mut command: Command, creates: &Path) -> Result<(), OverlayError> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(OverlayError::Spawn)?;
    let output = tokio::time::timeout(QEMU_IMG_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| OverlayError::Timeout(QEMU_IMG_TIMEOUT))?
        .map_err(OverlayError::Spawn)?;
    if !output.status.success() {
        return Err(OverlayError::Failed {
            path: creates.to_path_buf(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    if let Err(source) =
        tokio::fs::set_permissions(creates, std::fs::Permissions::from_mode(DISK_MODE)).await
    {
        let _ = tokio::fs::remove_file(creates).await;
        return Err(OverlayError::Mode {
            path: creates.to_path_buf(),
            source,
        });
    }
    Ok(())
}

/// Removes an overlay; one that does not exist is fine.
///
/// # Errors
/// The file exists and cannot be removed.
pub async fn remove_overlay(disk: &OverlayDisk) -> Result<(), OverlayError> {
    match tokio::fs::remove_file(&disk.overlay).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(OverlayError::Remove {
            path: disk.overlay.clone(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use paddock_spec::ImageFormat;

    use super::*;

    fn have_qemu_img() -> bool {
        std::process::Command::new("qemu-img")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    #[tokio::test]
    async fn images_are_closed_to_others_whatever_the_umask() {
        if !have_qemu_img() {
            eprintln!("SKIPPED: no qemu-img (package qemu-utils)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base.qcow2");
        // A world-readable file in the way: creating replaces its mode too.
        std::fs::write(&base, b"old").expect("write");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        create_blank_qcow2(&base, 1).await.expect("blank");
        let disk = OverlayDisk {
            overlay: dir.path().join("overlay.qcow2"),
            base: base.clone(),
            base_format: ImageFormat::Qcow2,
        };
        create_overlay(&disk).await.expect("overlay");
        for image in [&base, &disk.overlay] {
            let mode = std::fs::metadata(image).expect("made").permissions().mode() & 0o7777;
            assert_eq!(mode, DISK_MODE, "{image:?}: {mode:o}");
        }
    }
}
