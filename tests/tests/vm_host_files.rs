//! The host gives a guest, and every other local user, nothing to grab:
//! the directories, sockets, memory images and disks of a live sandbox and
//! of a pool's golden and slot are QEMU's group's and closed to others
//! (`paddock::vm::files`). `nobody` tries to list and write the
//! directories, read the images and disks and connect to the agent socket,
//! and is refused with `EACCES`, by the path and by the object itself;
//! root's same attempt succeeds, so each check can fail.
#![cfg(test)]

use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paddock::agent::Execute;
use paddock::vm::{DEFAULT_QEMU_GROUP, QemuGroup};
use paddock::{
    ChannelConfig, Paddock, PaddockConfig, PoolConfig, ResetStrategy, Sandbox, SandboxConfig,
    VmPoolSpec,
};
use paddock_tests::access::{Probe, mode_owner_group, too_open};
use paddock_tests::vm::{SYSTEM_URI, TEST_POOL, enabled, hybrid_vsock_backend, test_image};
use paddock_tests::{test_config, unique_marker};

type TestResult = anyhow::Result<()>;

/// The modes `paddock::vm::files` promises.
const DIR_MODE: u32 = 0o2750;
const SOCKET_MODE: u32 = 0o660;
const DISK_MODE: u32 = 0o640;
const MEMORY_MODE: u32 = 0o600;

/// A state root of the test's own, under `/var/tmp` (whose every ancestor
/// others may pass), so that what refuses `nobody` is Paddock's modes and
/// not libvirt's `/var/lib/libvirt/qemu` (mode 0750). Removed on drop.
struct StateRoot(PathBuf);

impl StateRoot {
    fn new() -> Self {
        Self(PathBuf::from(format!(
            "/var/tmp/paddock-files-{}",
            unique_marker()
        )))
    }
}

impl Drop for StateRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn probe() -> anyhow::Result<Probe> {
    Probe::new(Path::new(env!("CARGO_BIN_EXE_access_probe")))
}

fn qemu_group() -> anyhow::Result<QemuGroup> {
    Ok(QemuGroup::resolve(DEFAULT_QEMU_GROUP)?)
}

/// Checks `path` is a directory root owns with QEMU's group and mode 2750.
fn assert_qemu_dir(path: &Path, group: &QemuGroup) -> TestResult {
    let found = mode_owner_group(path)?;
    anyhow::ensure!(
        found == (DIR_MODE, 0, group.gid()),
        "{}: mode {:o}, owner {}, group {} (want 2750 root:{})",
        path.display(),
        found.0,
        found.1,
        found.2,
        group.name()
    );
    Ok(())
}

/// Checks `path` has exactly `mode` and QEMU's group.
fn assert_file(path: &Path, mode: u32, group: &QemuGroup) -> TestResult {
    let (found, owner, gid) = mode_owner_group(path)?;
    anyhow::ensure!(
        found == mode && gid == group.gid(),
        "{}: mode {found:o}, owner {owner}, group {gid} (want {mode:o}, group {})",
        path.display(),
        group.name()
    );
    Ok(())
}

/// Checks `path` is root's alone (mode 0600): a memory image or a console
/// log, which only libvirtd and virtlogd (root) touch; its group does not
/// matter (libvirt writes saved images as root:root).
fn assert_private(path: &Path) -> TestResult {
    let (mode, owner, gid) = mode_owner_group(path)?;
    anyhow::ensure!(
        mode == MEMORY_MODE && owner == 0,
        "{}: mode {mode:o}, owner {owner}, group {gid} (want 600, root)",
        path.display()
    );
    Ok(())
}

/// Checks `path` is a Unix socket of mode 0660 in QEMU's group.
fn assert_socket(path: &Path, group: &QemuGroup) -> TestResult {
    let meta = std::fs::symlink_metadata(path)?;
    anyhow::ensure!(
        meta.file_type().is_socket(),
        "{} is a socket",
        path.display()
    );
    assert_file(path, SOCKET_MODE, group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxs_directory_socket_and_disks_are_closed_to_other_users() -> TestResult {
    if !enabled("a_sandboxs_directory_socket_and_disks_are_closed_to_other_users") {
        return Ok(());
    }
    let group = qemu_group()?;
    let probe = probe()?;
    let root = StateRoot::new();
    let libvirt = paddock::libvirt::Libvirt::open(SYSTEM_URI).await?;
    let mut config = SandboxConfig::new(format!("paddock-test-{}", unique_marker()));
    config.state_root = root.0.clone();
    config.pool = TEST_POOL.into();
    config.state_disk_mib = Some(64);
    config.client = test_config();
    let sandbox = Sandbox::boot(&libvirt, &test_image()?, config).await?;
    let dir = sandbox.dir().to_path_buf();

    assert_qemu_dir(&root.0, &group)?;
    assert_qemu_dir(&dir, &group)?;
    assert_socket(&sandbox.agent_socket(), &group)?;
    for disk in ["overlay.qcow2", "base.qcow2"] {
        assert_file(&dir.join(disk), DISK_MODE, &group)?;
    }
    // virtlogd's console log: its owner's alone.
    assert_private(&dir.join("console.log"))?;
    let open = too_open(&root.0);
    anyhow::ensure!(open.is_empty(), "open to others: {open:?}");

    probe.refused_to_others("list", &root.0)?;
    probe.refused_to_others("list", &dir)?;
    probe.refused_to_others("write", &dir)?;
    probe.refused_to_others("read", &dir.join("overlay.qcow2"))?;
    probe.refused_to_others("read", &dir.join("base.qcow2"))?;
    probe.refused_to_others("read", &dir.join("console.log"))?;
    // The guest is served as before.
    let out = sandbox
        .client()
        .exec_collect(Execute::shell("echo served"))
        .await?;
    anyhow::ensure!(out.stdout == b"served\n", "{out:?}");
    // Last: root's control connection to the agent socket queues behind
    // the client's, which must not be disturbed before this point.
    probe.refused_to_others("connect", &sandbox.agent_socket())?;

    // Captured as a golden is: the memory image is its owner's alone.
    let captured = root.0.join("captured");
    paddock::vm::create_qemu_dir(&captured, &group)?;
    let memory = captured.join("memory.img");
    let disk = captured.join("disk.qcow2");
    sandbox.capture(&memory, &disk).await?;
    assert_private(&memory)?;
    assert_file(&disk, DISK_MODE, &group)?;
    probe.refused_to_others("read", &memory)?;
    probe.refused_to_others("read", &disk)?;
    anyhow::ensure!(!dir.exists(), "the sandbox removed its directory");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hybrid_vsock_sandboxs_sockets_are_closed_to_other_users() -> TestResult {
    if !enabled("a_hybrid_vsock_sandboxs_sockets_are_closed_to_other_users") {
        return Ok(());
    }
    let group = qemu_group()?;
    let probe = probe()?;
    let root = StateRoot::new();
    let libvirt = paddock::libvirt::Libvirt::open(SYSTEM_URI).await?;
    let mut config = SandboxConfig::new(format!("paddock-test-{}", unique_marker()));
    config.state_root = root.0.clone();
    config.pool = TEST_POOL.into();
    config.state_disk_mib = None;
    config.channel = ChannelConfig::HybridVsock {
        backend: hybrid_vsock_backend()?,
    };
    config.client = test_config();
    let sandbox = Sandbox::boot(&libvirt, &test_image()?, config).await?;
    let dir = sandbox.dir().to_path_buf();
    // The backend (root) makes both sockets in the set-group-ID
    // directory with umask 117; QEMU reached the vhost-user one through
    // its group (the backend unlinks it once QEMU is connected, and makes
    // it again when QEMU goes).
    assert_qemu_dir(&dir, &group)?;
    assert_socket(&dir.join("agent.sock"), &group)?;
    let vhost = dir.join("vhost-user.sock");
    if vhost.exists() {
        assert_socket(&vhost, &group)?;
    }
    let open = too_open(&root.0);
    anyhow::ensure!(open.is_empty(), "open to others: {open:?}");
    let out = sandbox
        .client()
        .exec_collect(Execute::shell("echo served"))
        .await?;
    anyhow::ensure!(out.stdout == b"served\n", "{out:?}");
    probe.refused_to_others("list", &dir)?;
    probe.refused_to_others("write", &dir)?;
    probe.refused_to_others("connect", &dir.join("agent.sock"))?;
    sandbox.destroy().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_golden_and_slot_files_are_closed_to_other_users() -> TestResult {
    if !enabled("a_pools_golden_and_slot_files_are_closed_to_other_users") {
        return Ok(());
    }
    let group = qemu_group()?;
    let probe = probe()?;
    let root = StateRoot::new();
    let mut config = PaddockConfig::new(test_image()?);
    config.libvirt_uri = SYSTEM_URI.into();
    config.state_root = root.0.clone();
    let paddock = Paddock::connect(config).await?;
    let name = format!("hf{}", unique_marker());
    let mut spec = VmPoolSpec::new(&name);
    // Restore keeps each slot's copy of the golden memory, and starts a
    // new QEMU (which binds the agent socket again) at every reset.
    spec.reset = ResetStrategy::Restore;
    spec.client = test_config();
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 1,
                max_size: 1,
                acquire_timeout: Duration::from_secs(120),
                ..PoolConfig::default()
            },
        )
        .await?;
    let checked = check_pool(&pool, &root.0.join(&name), &group, &probe).await;
    let closed = pool.close().await;
    checked?;
    closed?;
    Ok(())
}

async fn check_pool(
    pool: &paddock::VmPool,
    pool_dir: &Path,
    group: &QemuGroup,
    probe: &Probe,
) -> TestResult {
    pool.wait_ready(Duration::from_secs(180)).await?;
    let golden = pool.backend().golden();
    let slot = pool_dir.join("slot-0");
    let lease = pool.acquire().await?;
    let out = lease
        .client()
        .exec_collect(Execute::shell("echo served"))
        .await?;
    anyhow::ensure!(out.stdout == b"served\n", "{out:?}");

    for dir in [pool_dir, &golden.dir, &slot] {
        assert_qemu_dir(dir, group)?;
    }
    assert_private(&golden.memory)?;
    assert_private(&slot.join("memory.img"))?;
    assert_private(&slot.join("console.log"))?;
    // The golden's disk is the slots' backing file: libvirt gave it to
    // QEMU's user when the first slot started and does not give backing
    // files back, but it never changes a mode.
    for disk in [&golden.disk, &golden.base, &slot.join("overlay.qcow2")] {
        let (mode, owner, _) = mode_owner_group(disk)?;
        anyhow::ensure!(mode == DISK_MODE, "{}: mode {mode:o}", disk.display());
        println!("{}: mode {mode:o}, owner uid {owner}", disk.display());
    }
    assert_socket(&slot.join("agent.sock"), group)?;
    let open = too_open(pool_dir);
    anyhow::ensure!(open.is_empty(), "open to others: {open:?}");

    probe.refused_to_others("list", pool_dir)?;
    probe.refused_to_others("list", &golden.dir)?;
    probe.refused_to_others("read", &golden.memory)?;
    probe.refused_to_others("read", &golden.disk)?;
    probe.refused_to_others("list", &slot)?;
    probe.refused_to_others("write", &slot)?;
    probe.refused_to_others("read", &slot.join("memory.img"))?;
    probe.refused_to_others("read", &slot.join("overlay.qcow2"))?;
    probe.refused_to_others("read", &slot.join("console.log"))?;

    // A reset restores the slot into a new QEMU, for which libvirt binds
    // the agent socket again: its mode is restricted again.
    lease.release();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !(pool.ready_slots() == [0] && pool.stats().preparing == 0) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the slot came back after its reset: {:?}",
            pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_socket(&slot.join("agent.sock"), group)?;
    assert_file(&slot.join("overlay.qcow2"), DISK_MODE, group)?;
    let open = too_open(pool_dir);
    anyhow::ensure!(open.is_empty(), "open to others after a reset: {open:?}");
    // Last: root's control connection queues behind the pool's client.
    probe.refused_to_others("connect", &slot.join("agent.sock"))?;
    Ok(())
}
