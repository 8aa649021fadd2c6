//! A pool's golden state: a template VM booted from the image, warmed up,
//! and captured, from which every slot is made.
//!
//! A golden's files are made and removed here and nowhere else, all in its
//! directory `<pool dir>/golden-<id>/`:
//!
//! ```text
//! golden-<id>/
//!   blank.qcow2        the empty base disk (an image without a root disk)
//!   memory.img         the template's saved memory
//!   disk.qcow2         the template's disk overlay, frozen; slots' overlays sit on it
//! ```
//!
//! The template itself runs as a [`Sandbox`] in `<pool dir>/paddock-<pool>-golden-<id>/`
//! (beside the golden's directory, not in it: its agent socket's path must
//! stay within the 108 bytes of a Unix socket address), which it removes
//! when it is captured or fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use paddock_image::GuestImage;
use paddock_libvirt::{
    DomainRole, DomainSpec, Libvirt, NatAttachment, NetworkMode, Uuid, create_blank_qcow2,
};

use super::backend::{VmPoolSpec, run_commands};
use super::files::{QemuGroup, create_qemu_dir};
use super::guest::remove_dir;
use super::network::configure_guest;
use super::{Sandbox, SandboxConfig, VmError};

/// Who the golden state is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenId {
    /// A random id.
    pub id: String,
    /// When it was captured (Unix seconds).
    pub created_unix: u64,
    /// The hash of the image it was booted from.
    pub image_hash: String,
}

/// A captured golden state.
#[derive(Debug, Clone)]
pub struct Golden {
    /// Its identity.
    pub id: GoldenId,
    /// The directory holding all of its files.
    pub dir: PathBuf,
    /// The saved memory image.
    pub memory: PathBuf,
    /// The frozen disk (a qcow2 that slot overlays sit on).
    pub disk: PathBuf,
    /// The disk's own base: the blank disk, or the image's root disk.
    pub base: PathBuf,
    /// The template's domain spec; slots change only names and paths.
    pub spec: DomainSpec,
    /// How long the template took from start to agent ready.
    pub boot_to_ready: Duration,
}

impl Golden {
    /// Boots a template from `image` in a new golden directory under
    /// `pool_dir`, gives it `identity` (a NAT-filtered pool's golden
    /// address), runs the warm-up commands and captures it. Its files go
    /// to QEMU's `group` ([`super::files`]). On failure nothing of it is
    /// left.
    ///
    /// # Errors
    /// [`VmError::Name`] for a pool name that breaks the naming rule
    /// (before anything is made); the template does not boot, a warm-up
    /// command fails, or the capture fails.
    pub async fn build(
        libvirt: &Libvirt,
        image: &GuestImage,
        spec: &VmPoolSpec,
        pool_dir: &Path,
        identity: Option<&NatAttachment>,
        group: &QemuGroup,
    ) -> Result<Self, VmError> {
        crate::names::check_pool_name(&spec.name)?;
        let id = Uuid::new_v4().simple().to_string();
        let dir = pool_dir.join(format!("golden-{}", &id[..8]));
        create_qemu_dir(&dir, group)?;
        let built = Self::build_in(libvirt, image, spec, &dir, &id, identity, group).await;
        if built.is_err() {
            // The template removed itself; its files go too, so a half
            // built golden is never used.
            let _ = remove_dir(&dir).await;
        }
        built
    }

    async fn build_in(
        libvirt: &Libvirt,
        image: &GuestImage,
        spec: &VmPoolSpec,
        dir: &Path,
        id: &str,
        identity: Option<&NatAttachment>,
        group: &QemuGroup,
    ) -> Result<Self, VmError> {
        let base_disk = match &image.root_disk {
            Some(root) => root.clone(),
            None => {
                let blank = dir.join("blank.qcow2");
                create_blank_qcow2(&blank, 64).await?;
                blank
            }
        };
        let mut config = SandboxConfig::new(format!("paddock-{}-golden-{}", spec.name, &id[..8]));
        config.state_root = dir.parent().unwrap_or(dir).to_path_buf();
        config.qemu_group = group.name().to_owned();
        config.pool = spec.name.clone();
        config.role = DomainRole::Golden;
        config.memory_mib = spec.memory_mib;
        config.vcpus = spec.vcpus;
        config.tuning = spec.tuning;
        config.run_as = spec.run_as;
        config.ksm_mergeable = spec.ksm_mergeable;
        config.ready_timeout = spec.boot_timeout;
        config.client = spec.client.clone();
        config.base_disk = Some(base_disk.clone());
        if let Some(attachment) = identity {
            config.network = NetworkMode::NatFiltered(attachment.clone());
        }
        let template = Sandbox::boot(libvirt, image, config).await?;
        let boot_to_ready = template.boot_to_ready();
        if let Some(attachment) = identity {
            // Static from here on: every slot replaces it with its own.
            configure_guest(template.client(), attachment, true).await?;
        }
        run_commands(template.client(), &spec.warmup, "warm-up").await?;
        let memory = dir.join("memory.img");
        let disk = dir.join("disk.qcow2");
        let template_spec = template.capture(&memory, &disk).await?;
        Ok(Self {
            id: GoldenId {
                id: id.to_owned(),
                created_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                image_hash: image.hash.clone(),
            },
            dir: dir.to_path_buf(),
            memory,
            disk,
            base: base_disk,
            spec: template_spec,
            boot_to_ready,
        })
    }

    /// The first of the golden's files that is gone (the memory image, the
    /// frozen disk or its base), if any: slots cannot be made from it then.
    #[must_use]
    pub fn missing_file(&self) -> Option<&Path> {
        [&self.memory, &self.disk, &self.base]
            .into_iter()
            .find(|file| !file.is_file())
            .map(PathBuf::as_path)
    }

    /// Removes the golden's files. Slots made from it must be gone first:
    /// their overlays sit on its disk.
    ///
    /// # Errors
    /// A file cannot be removed.
    pub async fn remove(&self) -> Result<(), VmError> {
        remove_dir(&self.dir).await
    }
}
