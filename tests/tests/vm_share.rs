//! Shared folders on real VMs: host directories a single sandbox mounts
//! over virtiofs. A read-only folder stays read-only even to a guest that
//! remounts it; a read-write one carries the guest's files to the host; a
//! symbolic link the guest makes does not lead out of the folder; a pool
//! or a snapshot with shared folders is refused before anything is made.
#![cfg(test)]

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use paddock::libvirt::{SharedFolder, SnapshotSpec};
use paddock::{PoolConfig, Sandbox, SandboxConfig, VmError, VmPoolSpec};
use paddock_agent_client::Execute;
use paddock_tests::vm::{
    POOL_ROOT, SANDBOX_ROOT, SYSTEM_URI, TEST_POOL, TestSandbox, TestSandboxOptions, enabled,
    test_domains, test_image, test_paddock,
};
use paddock_tests::{test_config, unique_marker};

type TestResult = anyhow::Result<()>;

/// The owner of the read-write folders: not root, and no one's.
const RW_OWNER: u32 = 4242;

/// A host directory for a test's folder, removed (with whatever the guest
/// left in it) on drop.
fn host_dir(what: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("paddock-share-{what}-"))
        .tempdir()?)
}

/// Runs `line` in the guest; returns (exit code, stdout, stderr).
async fn sh(sandbox: &TestSandbox, line: &str) -> anyhow::Result<(Option<i32>, String, String)> {
    let out = sandbox
        .client()
        .exec_collect(Execute::shell(line.to_owned()))
        .await?;
    Ok((
        out.result.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Whether a bind mount of the host directory `dir` exists in this mount
/// namespace (its root, field 4 of mountinfo, ends with the directory's
/// unique name).
fn bind_mounted(dir: &Path) -> anyhow::Result<bool> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let name = dir
        .file_name()
        .context("a directory with a name")?
        .to_string_lossy()
        .into_owned();
    Ok(mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(3))
        .any(|root| root.ends_with(&format!("/{name}"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_read_write_folders_hold_against_the_guest() -> TestResult {
    if !enabled("read_only_and_read_write_folders_hold_against_the_guest") {
        return Ok(());
    }
    let ro = host_dir("ro")?;
    let rw = host_dir("rw")?;
    std::fs::write(ro.path().join("hello.txt"), b"from the host\n")?;
    // A read-write folder must not be root's: the guest's root writes there
    // as its owner.
    std::os::unix::fs::chown(rw.path(), Some(RW_OWNER), Some(RW_OWNER))?;
    let sandbox = TestSandbox::boot(TestSandboxOptions {
        shared_folders: vec![
            SharedFolder::read_only(ro.path(), "input", "/mnt/input"),
            SharedFolder::read_write(rw.path(), "output", "/mnt/output"),
        ],
        scratch_disk_mib: Some(64),
        ..TestSandboxOptions::default()
    })
    .await?;
    let exports = Path::new(SANDBOX_ROOT).join(format!("{}.shares", sandbox.name()));
    assert!(
        bind_mounted(ro.path())?,
        "the read-only folder is exported through a bind mount"
    );
    assert!(
        bind_mounted(rw.path())?,
        "the read-write folder is exported through an idmapped bind mount"
    );

    // Read-only: the guest reads, and cannot write, not even after it
    // remounts the folder read-write.
    let (code, stdout, _) = sh(&sandbox, "cat /mnt/input/hello.txt").await?;
    assert_eq!((code, stdout.as_str()), (Some(0), "from the host\n"));
    let (code, _, stderr) = sh(&sandbox, "echo guest > /mnt/input/new.txt").await?;
    assert_ne!(code, Some(0), "a write to a read-only folder succeeded");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    let (remount, _, remount_err) = sh(&sandbox, "mount -o remount,rw /mnt/input").await?;
    eprintln!("guest remount read-write: {remount:?} {remount_err}");
    let (code, _, stderr) = sh(
        &sandbox,
        "echo guest > /mnt/input/new.txt; echo guest >> /mnt/input/hello.txt; rm /mnt/input/hello.txt",
    )
    .await?;
    assert_ne!(code, Some(0), "a write after a remount succeeded");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(
        !ro.path().join("new.txt").exists(),
        "the guest created a file"
    );
    assert_eq!(
        std::fs::read(ro.path().join("hello.txt"))?,
        b"from the host\n",
        "the guest changed a read-only file"
    );

    // Read-write: the host sees what the guest writes, with its mode, owned
    // by the folder's owner where the guest sees its root.
    let (code, stdout, stderr) = sh(
        &sandbox,
        "umask 027; echo from the guest > /mnt/output/result.txt && stat -c '%u %a' /mnt/output/result.txt",
    )
    .await?;
    assert_eq!(code, Some(0), "{stderr}");
    let written = rw.path().join("result.txt");
    assert_eq!(std::fs::read(&written)?, b"from the guest\n");
    let meta = std::fs::metadata(&written)?;
    assert_eq!(stdout.trim(), "0 640", "the guest sees its root's file");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (RW_OWNER, RW_OWNER, 0o640),
        "the host sees the folder owner's file with the guest's mode"
    );

    // A set-user-ID program the guest's root leaves is not root's on the
    // host.
    let (code, _, stderr) = sh(
        &sandbox,
        "cp /bin/busybox /mnt/output/suid && chmod 4755 /mnt/output/suid",
    )
    .await?;
    assert_eq!(code, Some(0), "{stderr}");
    let suid = std::fs::metadata(rw.path().join("suid"))?;
    assert_eq!(suid.mode() & 0o4000, 0o4000, "the bit is kept");
    assert_eq!(suid.uid(), RW_OWNER, "a set-user-ID root file on the host");
    // Nor can the guest give a file to another host user: only its root
    // has an id there.
    let (code, _, stderr) = sh(&sandbox, "chown 1000:1000 /mnt/output/suid").await?;
    assert_ne!(code, Some(0), "the guest gave a file to host user 1000");
    eprintln!("guest chown to 1000: {stderr}");
    let suid = std::fs::metadata(rw.path().join("suid"))?;
    assert_eq!((suid.uid(), suid.gid()), (RW_OWNER, RW_OWNER));

    // A symbolic link to /etc made by the guest leads to the guest's /etc,
    // never the host's: the host's passwd has libvirt's user, the guest's
    // has not.
    let host_passwd = std::fs::read_to_string("/etc/passwd")?;
    assert!(host_passwd.contains("libvirt-qemu"));
    let (code, stdout, stderr) = sh(
        &sandbox,
        "ln -s /etc /mnt/output/escape && ln -s ../../../../../../etc/passwd /mnt/output/up \
         && cat /mnt/output/escape/passwd /mnt/output/up",
    )
    .await?;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stdout.contains("libvirt-qemu"),
        "the guest read the host's /etc/passwd through a link: {stdout}"
    );
    assert_eq!(
        std::fs::read_link(rw.path().join("escape"))?,
        PathBuf::from("/etc"),
        "the link is stored as a link"
    );
    // No device nodes: virtiofsd has no CAP_MKNOD.
    let (code, _, _) = sh(&sandbox, "mknod /mnt/output/disk b 8 0").await?;
    assert_ne!(code, Some(0), "the guest made a device node on the host");
    assert!(!rw.path().join("disk").exists());

    // QEMU cannot snapshot a guest with a virtiofs device: refused first.
    let refused = sandbox
        .snapshot(&SnapshotSpec {
            name: "s".into(),
            description: String::new(),
            tags: Vec::new(),
        })
        .await;
    assert!(
        matches!(refused, Err(VmError::SharesPreventSnapshot { .. })),
        "{refused:?}"
    );

    let name = sandbox.name().to_owned();
    sandbox.destroy().await?;
    assert!(!bind_mounted(ro.path())?, "a bind mount was left");
    assert!(!exports.exists(), "{} was left", exports.display());
    assert!(
        ro.path().join("hello.txt").exists(),
        "the host's files stay when the sandbox goes"
    );
    let libvirt = paddock::libvirt::Libvirt::open(SYSTEM_URI).await?;
    assert!(!test_domains(&libvirt).await?.contains(&name));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_the_guest_cannot_mount_fails_the_boot_with_a_typed_error() -> TestResult {
    if !enabled("a_folder_the_guest_cannot_mount_fails_the_boot_with_a_typed_error") {
        return Ok(());
    }
    let ro = host_dir("unmountable")?;
    let libvirt = paddock::libvirt::Libvirt::open(SYSTEM_URI).await?;
    let name = format!("paddock-test-{}", unique_marker());
    let mut config = SandboxConfig::new(&name);
    config.state_root = SANDBOX_ROOT.into();
    config.pool = TEST_POOL.into();
    config.client = test_config();
    // /proc/... cannot be made in the guest: mkdir fails there.
    config.shared_folders = vec![SharedFolder::read_only(ro.path(), "data", "/proc/data")];
    let booted = Sandbox::boot(&libvirt, &test_image()?, config).await;
    let err = booted.err().context("a boot whose mount fails succeeded")?;
    match &err {
        VmError::ShareMount {
            tag, guest_path, ..
        } => {
            assert_eq!(tag, "data");
            assert_eq!(guest_path, Path::new("/proc/data"));
        }
        other => panic!("not a ShareMount error: {other:?}"),
    }
    eprintln!("{err}");
    assert!(
        !test_domains(&libvirt).await?.contains(&name),
        "the domain was left"
    );
    let root = Path::new(SANDBOX_ROOT);
    assert!(!root.join(&name).exists(), "the sandbox directory was left");
    assert!(
        !root.join(format!("{name}.shares")).exists(),
        "the exports directory was left"
    );
    assert!(!bind_mounted(ro.path())?, "the bind mount was left");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_and_bad_folders_are_refused_before_anything_is_made() -> TestResult {
    if !enabled("pools_and_bad_folders_are_refused_before_anything_is_made") {
        return Ok(());
    }
    let dir = host_dir("pool")?;
    let paddock = test_paddock().await?;
    let name = format!("ps{}", unique_marker());
    let mut spec = VmPoolSpec::new(&name);
    spec.shared_folders = vec![SharedFolder::read_only(dir.path(), "data", "/mnt/data")];
    let refused = paddock.create_pool(spec, PoolConfig::default()).await;
    match &refused {
        Err(err @ VmError::SharesInPool { pool }) => {
            assert_eq!(pool, &name);
            eprintln!("{err}");
        }
        other => panic!("not refused as SharesInPool: {other:?}"),
    }
    assert!(
        !Path::new(POOL_ROOT).join(&name).exists(),
        "the refused pool made its directory"
    );
    let domains = paddock.libvirt().paddock_domains().await?;
    assert!(
        domains.iter().all(|(_, meta)| meta.pool != name),
        "the refused pool made a domain"
    );

    // A missing host directory is refused before a domain exists.
    let booted = TestSandbox::boot(TestSandboxOptions {
        shared_folders: vec![SharedFolder::read_write(
            dir.path().join("missing"),
            "data",
            "/mnt/data",
        )],
        ..TestSandboxOptions::default()
    })
    .await;
    let err = booted
        .err()
        .context("a missing host directory was accepted")?;
    assert!(
        matches!(err.downcast_ref::<VmError>(), Some(VmError::Share(_))),
        "{err:#}"
    );
    Ok(())
}
