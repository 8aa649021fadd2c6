//! Removing what a crashed process left of a pool: its domains, found by
//! their Paddock metadata, and its slot, golden and template directories.

use std::path::Path;

use paddock_libvirt::Libvirt;

use super::VmError;

/// Destroys every domain of pool `pool` (slots and golden templates, found
/// by their Paddock metadata) and removes the slot and golden directories
/// under `pool_dir`, and the golden templates' (`paddock-*`). Returns how
/// many domains it destroyed. A domain that
/// cannot be removed is logged and left; its name stays taken.
///
/// # Errors
/// libvirt cannot list the domains.
pub async fn recover_pool(
    libvirt: &Libvirt,
    pool: &str,
    pool_dir: &Path,
) -> Result<usize, VmError> {
    let mut removed = 0;
    for (vm, metadata) in libvirt.paddock_domains().await? {
        if metadata.pool == pool {
            match vm.discard().await {
                Ok(()) => removed += 1,
                Err(err) => {
                    tracing::warn!(domain = vm.name(), error = %err, "could not remove a leftover domain");
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(pool_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = ["slot-", "golden-", "paddock-"]
                .iter()
                .any(|prefix| name.starts_with(prefix));
            if ours {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
            }
        }
    }
    Ok(removed)
}
