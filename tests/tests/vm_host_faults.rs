//! Faults of the host's disk under a pool, on real VMs: a full disk while
//! the golden is captured and while slots are made, and the golden's or
//! the image's files deleted under a live pool. Each gives a typed error
//! that names the path, and no slot is ever made from missing or half
//! written files. The full disks are tmpfs mounts the tests make, so they
//! disturb nothing else.
#![cfg(test)]

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use paddock::agent::Execute;
use paddock::{
    GuestImage, Paddock, PaddockConfig, PoolConfig, PoolError, VmError, VmPool, VmPoolSpec,
};
use paddock_tests::vm::{SYSTEM_URI, enabled, test_image};
use paddock_tests::{test_config, unique_marker};

type TestResult = anyhow::Result<()>;

/// A tmpfs of a given size, mounted for one test and unmounted after it.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(mib: u64) -> anyhow::Result<Self> {
        // Under libvirt's state directory, which QEMU's user can traverse;
        // short, since sockets live below it.
        let dir = PathBuf::from(format!("/var/lib/libvirt/qemu/ptf-{}", unique_marker()));
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={mib}m,mode=0755"))
            .arg("tmpfs")
            .arg(&dir)
            .status()?;
        ensure!(status.success(), "mount -t tmpfs failed: {status}");
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Fills the file system but for `left_mib`.
    fn fill(&self, left_mib: u64) -> anyhow::Result<PathBuf> {
        let stat = nix_free_bytes(&self.0)?;
        let filler = self.0.join("filler");
        let len = stat.saturating_sub(left_mib << 20);
        let status = Command::new("fallocate")
            .args(["-l", &len.to_string()])
            .arg(&filler)
            .status()?;
        ensure!(status.success(), "fallocate failed: {status}");
        Ok(filler)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Free bytes on the file system holding `path` (`df -B1`).
fn nix_free_bytes(path: &Path) -> anyhow::Result<u64> {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .context("df printed no free space")
}

async fn paddock_at(state_root: &Path, image: GuestImage) -> anyhow::Result<Paddock> {
    let mut config = PaddockConfig::new(image);
    config.libvirt_uri = SYSTEM_URI.into();
    config.state_root = state_root.to_path_buf();
    Ok(Paddock::connect(config).await?)
}

fn spec(name: &str) -> VmPoolSpec {
    let mut spec = VmPoolSpec::new(name);
    spec.client = test_config();
    spec
}

fn config(min_ready: usize, acquire_timeout: Duration) -> PoolConfig {
    PoolConfig {
        min_ready,
        max_size: 1,
        acquire_timeout,
        health_check_interval: None,
        ..PoolConfig::default()
    }
}

/// An error and its sources, as one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

async fn pool_domains(paddock: &Paddock, name: &str) -> anyhow::Result<usize> {
    Ok(paddock
        .libvirt()
        .paddock_domains()
        .await?
        .into_iter()
        .filter(|(_, metadata)| metadata.pool == name)
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_disk_fails_the_golden_capture_naming_the_file() -> TestResult {
    if !enabled("a_full_host_disk_fails_the_golden_capture_naming_the_file") {
        return Ok(());
    }
    // Room for the template's disks, not for its 60-70 MB of saved memory.
    let disk = Tmpfs::mount(40)?;
    let paddock = paddock_at(disk.path(), test_image()?).await?;
    let name = format!("hd{}", unique_marker());
    let err = paddock
        .create_pool(spec(&name), config(1, Duration::from_secs(5)))
        .await
        .expect_err("the golden's memory does not fit");
    let text = chain(&err);
    eprintln!("golden capture on a full disk: {text}");
    let pool_dir = disk.path().join(&name);
    ensure!(
        text.contains(&pool_dir.display().to_string()) && text.contains("memory.img"),
        "the error names the file: {text}"
    );
    ensure!(
        matches!(err, VmError::Libvirt(_)) && err.source().is_some(),
        "{err:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&pool_dir)
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(left.is_empty(), "no half-written golden is left: {left:?}");
    ensure!(
        pool_domains(&paddock, &name).await? == 0,
        "no domain is left"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_disk_fails_slot_creation_until_there_is_room() -> TestResult {
    if !enabled("a_full_host_disk_fails_slot_creation_until_there_is_room") {
        return Ok(());
    }
    let disk = Tmpfs::mount(400)?;
    let paddock = paddock_at(disk.path(), test_image()?).await?;
    let name = format!("hd{}", unique_marker());
    // No slot yet: the first acquire makes one.
    let pool: VmPool = paddock
        .create_pool(spec(&name), config(0, Duration::from_secs(20)))
        .await?;
    let filler = disk.fill(8)?;
    let err = pool.acquire().await.expect_err("no room for a slot");
    let PoolError::AcquireTimeout {
        last_failure: Some(failure),
        ..
    } = &err
    else {
        anyhow::bail!("not a timeout with a slot failure: {err:?}");
    };
    let text = chain(failure);
    eprintln!("slot creation on a full disk: {text}");
    ensure!(
        text.contains(&disk.path().display().to_string()) && text.contains("No space"),
        "the failure names the file and why: {text}"
    );
    ensure!(
        pool_domains(&paddock, &name).await? == 0,
        "no slot came of it"
    );
    std::fs::remove_file(&filler)?;
    let lease = pool.acquire().await.context("a slot once there is room")?;
    let out = lease.client().exec_collect(Execute::argv(["true"])).await?;
    ensure!(out.result.exit_code == Some(0));
    drop(lease);
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_golden_deleted_under_a_live_pool_is_rebuilt() -> TestResult {
    if !enabled("a_golden_deleted_under_a_live_pool_is_rebuilt") {
        return Ok(());
    }
    let paddock = paddock_tests::vm::test_paddock().await?;
    let name = format!("hd{}", unique_marker());
    let mut cfg = config(1, Duration::from_secs(180));
    // Each slot serves one lease: the next lease needs a new slot.
    cfg.max_uses = Some(1);
    let pool = paddock.create_pool(spec(&name), cfg).await?;
    pool.wait_ready(Duration::from_secs(180)).await?;
    let old = pool.backend().golden();
    std::fs::remove_dir_all(&old.dir)?;
    drop(pool.acquire().await?);
    let lease = pool.acquire().await.context("a slot from a new golden")?;
    let new = pool.backend().golden();
    ensure!(new.id != old.id, "the golden was rebuilt");
    ensure!(new.missing_file().is_none() && !old.dir.exists());
    let out = lease.client().exec_collect(Execute::argv(["true"])).await?;
    ensure!(out.result.exit_code == Some(0));
    drop(lease);
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_deleted_under_a_live_pool_fails_creations_clearly() -> TestResult {
    if !enabled("an_image_deleted_under_a_live_pool_fails_creations_clearly") {
        return Ok(());
    }
    // A copy of the test image that this test may delete, where QEMU's
    // user can read it.
    let original = test_image()?;
    let copy_dir = PathBuf::from(format!("/var/lib/paddock/test-images/{}", unique_marker()));
    std::fs::create_dir_all(&copy_dir)?;
    let mut image = original.clone();
    image.kernel = copy_dir.join("vmlinuz");
    image.initramfs = copy_dir.join("initramfs.cpio.gz");
    std::fs::copy(&original.kernel, &image.kernel)?;
    std::fs::copy(&original.initramfs, &image.initramfs)?;
    let paddock = paddock_at(Path::new(paddock_tests::vm::POOL_ROOT), image.clone()).await?;
    let name = format!("hd{}", unique_marker());
    let mut cfg = config(1, Duration::from_secs(10));
    cfg.max_uses = Some(1);
    let pool = paddock.create_pool(spec(&name), cfg).await?;
    pool.wait_ready(Duration::from_secs(180)).await?;
    let golden = pool.backend().golden();
    std::fs::remove_dir_all(&copy_dir)?;
    std::fs::remove_dir_all(&golden.dir)?;
    drop(pool.acquire().await?);
    let err = pool
        .acquire()
        .await
        .expect_err("nothing to make a slot from");
    let text = chain(&err);
    ensure!(
        text.contains(&image.kernel.display().to_string()),
        "it names the missing file: {text}"
    );
    let failure = pool.last_failure().context("a slot failure")?;
    ensure!(failure.reason() == "image_missing", "{failure:?}");
    ensure!(pool_domains(&paddock, &name).await? == 0, "nothing booted");
    pool.close().await?;
    Ok(())
}
