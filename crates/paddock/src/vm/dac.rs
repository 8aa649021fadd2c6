//! QEMU as a user of the pool's own ([`DacLabel`]): libvirt changes no
//! file's owner for it, so the one file such a QEMU writes by path, its
//! disk overlay, is handed to that user here.

use std::os::unix::fs::PermissionsExt as _;

use paddock_libvirt::{DacLabel, OverlayDisk};

use super::VmError;

/// Gives `disk`'s overlay to `label`'s user and group, readable and
/// writable by them alone (mode 0600); nothing without a label. Its base
/// stays as it is: QEMU only reads it.
pub(crate) async fn hand_over(disk: &OverlayDisk, label: Option<DacLabel>) -> Result<(), VmError> {
    let Some(label) = label else {
        return Ok(());
    };
    let overlay = disk.overlay.clone();
    tokio::task::spawn_blocking(move || {
        std::os::unix::fs::chown(&overlay, Some(label.uid), Some(label.gid))
            .map_err(VmError::io("change the owner of", &overlay))?;
        std::fs::set_permissions(&overlay, std::fs::Permissions::from_mode(0o600))
            .map_err(VmError::io("set the permissions of", &overlay))
    })
    .await
    .map_err(|join| VmError::io("hand over", &disk.overlay)(std::io::Error::other(join)))?
}
