//! What a pool leaves behind, and removing it: what a crashed process
//! left (found by the domains' Paddock metadata and the directories'
//! names), and what a live pool failed to remove (remembered and tried
//! again).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use paddock_libvirt::Libvirt;

use super::VmError;

/// Destroys every domain of pool `pool` (slots and golden templates, found
/// by their Paddock metadata) and removes the slot and golden directories
/// under `pool_dir`, and the golden templates' (`paddock-*`). Returns how
/// many domains it destroyed. A domain that
/// cannot be removed is logged and left; its name stays taken.
///
/// # Errors
/// [`VmError::Name`] for a pool name that breaks the naming rule
/// ([`crate::names`]; nothing is touched), or libvirt cannot list the
/// domains.
pub async fn recover_pool(
    libvirt: &Libvirt,
    pool: &str,
    pool_dir: &Path,
) -> Result<usize, VmError> {
    crate::names::check_pool_name(pool)?;
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

/// A domain and its directory whose removal failed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leftover {
    domain: String,
    dir: PathBuf,
}

/// What a live pool could not remove (libvirtd away, a file busy), tried
/// again by [`Leftovers::sweep`] so that nothing is forgotten.
#[derive(Debug, Default)]
pub(crate) struct Leftovers(Mutex<Vec<Leftover>>);

impl Leftovers {
    /// Remembers a domain and directory to remove later.
    pub(crate) fn remember(&self, domain: &str, dir: &Path) {
        tracing::warn!(domain, dir = %dir.display(), "could not remove a slot; trying again later");
        let leftover = Leftover {
            domain: domain.to_owned(),
            dir: dir.to_path_buf(),
        };
        let mut list = self.lock();
        if !list.contains(&leftover) {
            list.push(leftover);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Leftover>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tries to remove everything remembered; returns the domains still
    /// left (they stay remembered).
    pub(crate) async fn sweep(&self, libvirt: &Libvirt) -> Vec<String> {
        let pending = std::mem::take(&mut *self.lock());
        let mut left = Vec::new();
        for leftover in pending {
            let domain = match libvirt.lookup(&leftover.domain).await {
                Ok(vm) => vm.discard().await,
                Err(err) if err.is_not_found() => Ok(()),
                Err(err) => Err(err),
            };
            let files = match tokio::fs::remove_dir_all(&leftover.dir).await {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            };
            if domain.is_ok() && files.is_ok() {
                tracing::info!(
                    domain = leftover.domain,
                    "removed a slot whose removal had failed"
                );
            } else {
                left.push(leftover.domain.clone());
                self.lock().push(leftover);
            }
        }
        left
    }
}
