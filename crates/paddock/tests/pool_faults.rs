//! The pool's logic, fast: slots are domains on libvirt's in-process test
//! driver (a real libvirt code path, no QEMU), and the backend fails on
//! command (fault injection: creation, reset and health check failures, a
//! slot that never answers).
#![cfg(test)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use paddock::{Pool, PoolConfig, PoolError, SlotBackend, VmError};
use paddock_libvirt::{
    Acceleration, AgentChannel, Boot, DomainRole, DomainSpec, DomainState, Libvirt, LibvirtError,
    NetworkMode, PaddockMetadata, Profile, Uuid, Vm,
};

const POOL: &str = "faults";

/// Failures to inject; each counter fails that many calls.
#[derive(Debug, Default)]
struct Faults {
    creates: AtomicU32,
    resets: AtomicU32,
    checks: AtomicU32,
    /// Health checks never answer while set.
    hang_checks: AtomicBool,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Why a test-driver slot operation failed.
#[derive(Debug, thiserror::Error)]
enum TestDriverError {
    #[error("Injected {0} failure")]
    Injected(&'static str),
    #[error("Libvirt failed")]
    Libvirt(#[from] LibvirtError),
    #[error("The domain is {0:?}")]
    NotRunning(DomainState),
}

/// Slots as test-driver domains.
#[derive(Debug)]
struct TestDriverBackend {
    libvirt: Libvirt,
    faults: Arc<Faults>,
    resets: AtomicU32,
}

#[derive(Debug)]
struct TestSlot {
    vm: Vm,
    /// Stands in for guest state: set by a lease, cleared by a reset.
    dirty: AtomicBool,
}

fn spec(index: u32) -> DomainSpec {
    let profile = Profile::Light;
    DomainSpec {
        name: format!("paddock-{POOL}-{index}"),
        uuid: Uuid::new_v4(),
        metadata: PaddockMetadata {
            pool: POOL.into(),
            role: DomainRole::Slot(index),
            image: "test".into(),
            golden: Some("golden".into()),
            created_unix: 0,
        },
        profile,
        tuning: profile.tuning(),
        acceleration: Acceleration::Tcg,
        boot: Boot::Kernel {
            kernel: "/nonexistent/vmlinuz".into(),
            initrd: None,
            cmdline: String::new(),
        },
        disk: None,
        console_log: PathBuf::from("/nonexistent/console.log"),
        channel: AgentChannel::VirtioSerial {
            socket: PathBuf::from(format!("/nonexistent/{index}.sock")),
            name: "org.paddock.agent.0".into(),
        },
        network: NetworkMode::Isolated,
        run_as: None,
        filesystems: Vec::new(),
        serial_ports: Vec::new(),
    }
}

impl SlotBackend for TestDriverBackend {
    type Slot = TestSlot;
    type Error = TestDriverError;

    async fn create(&self, index: u32) -> Result<TestSlot, TestDriverError> {
        if take(&self.faults.creates) {
            return Err(TestDriverError::Injected("creation"));
        }
        let vm = self.libvirt.define(&spec(index)).await?;
        vm.start().await?;
        Ok(TestSlot {
            vm,
            dirty: AtomicBool::new(false),
        })
    }

    async fn reset(&self, slot: &mut TestSlot) -> Result<(), TestDriverError> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        if take(&self.faults.resets) {
            return Err(TestDriverError::Injected("reset"));
        }
        slot.vm.destroy().await?;
        slot.vm.start().await?;
        slot.dirty.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn check(&self, slot: &TestSlot) -> Result<(), TestDriverError> {
        if self.faults.hang_checks.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if take(&self.faults.checks) {
            return Err(TestDriverError::Injected("check"));
        }
        match slot.vm.status().await?.state {
            DomainState::Running => Ok(()),
            other => Err(TestDriverError::NotRunning(other)),
        }
    }

    async fn destroy(&self, slot: TestSlot) -> Result<(), TestDriverError> {
        let _ = slot.vm.destroy().await;
        slot.vm.undefine().await?;
        Ok(())
    }

    fn discard_blocking(&self, slot: TestSlot) {
        let _ = slot.vm.discard_blocking();
    }
}

struct Harness {
    libvirt: Libvirt,
    faults: Arc<Faults>,
    dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node.xml");
    std::fs::write(&node, "<node></node>").expect("node file");
    let libvirt = Libvirt::open(&format!("test://{}", node.display()))
        .await
        .expect("test driver");
    Harness {
        libvirt,
        faults: Arc::new(Faults::default()),
        dir,
    }
}

impl Harness {
    async fn pool(&self, config: PoolConfig) -> Pool<TestDriverBackend> {
        let backend = TestDriverBackend {
            libvirt: self.libvirt.clone(),
            faults: Arc::clone(&self.faults),
            resets: AtomicU32::new(0),
        };
        let pool = Pool::start(backend, config).await.expect("pool starts");
        pool.wait_ready(Duration::from_secs(10))
            .await
            .expect("min_ready slots");
        pool
    }

    async fn domains(&self) -> usize {
        self.libvirt
            .paddock_domains()
            .await
            .expect("list")
            .into_iter()
            .filter(|(_, meta)| meta.pool == POOL)
            .count()
    }
}

fn config(min_ready: usize, max_size: usize) -> PoolConfig {
    PoolConfig {
        min_ready,
        max_size,
        max_concurrent_prepares: 2,
        ttl: None,
        max_uses: None,
        health_check_interval: None,
        acquire_timeout: Duration::from_secs(5),
        create_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(2),
        ..PoolConfig::default()
    }
}

/// Waits until `condition` holds on the pool's stats (the pool works in the
/// background), or fails after 10 s.
async fn settle(
    pool: &Pool<TestDriverBackend>,
    condition: impl Fn(&paddock::PoolStats) -> bool,
) -> paddock::PoolStats {
    for _ in 0..500 {
        let stats = pool.stats();
        if condition(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the pool did not settle: {:?}", pool.stats());
}

#[tokio::test]
async fn acquire_release_reset_and_refill() {
    let h = harness().await;
    let pool = h.pool(config(2, 3)).await;
    assert_eq!(h.domains().await, 2);

    let lease = pool.acquire().await.expect("a ready slot");
    lease.dirty.store(true, Ordering::SeqCst);
    let index = lease.index();
    // Refill: one leased, two ready again (max_size 3).
    let stats = settle(&pool, |s| s.ready == 2 && s.leased == 1).await;
    assert_eq!(stats.total, 3);

    lease.release();
    settle(&pool, |s| s.ready == 3 && s.leased == 0).await;
    assert_eq!(pool.backend().resets.load(Ordering::SeqCst), 1);
    // The reset slot is ready and clean; FIFO among ready slots puts it last.
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(pool.acquire().await.expect("slot"));
    }
    let reused = leases
        .iter()
        .find(|l| l.index() == index)
        .expect("same slot");
    assert!(!reused.dirty.load(Ordering::SeqCst), "reset cleared it");
    assert_eq!(reused.uses(), 1);
    drop(leases);

    pool.shutdown().await;
    settle(&pool, |s| s.total == 0).await;
    assert_eq!(h.domains().await, 0, "shutdown destroys every slot");
    assert!(matches!(pool.acquire().await, Err(PoolError::Closed)));
}

#[tokio::test]
async fn waiters_are_served_first_come_first_served_and_time_out() {
    let h = harness().await;
    let mut cfg = config(1, 1);
    cfg.acquire_timeout = Duration::from_millis(300);
    let pool = h.pool(cfg).await;
    let held = pool.acquire().await.expect("slot");

    // Nothing free: the acquire times out with a clear error.
    let err = pool.acquire().await.expect_err("no slot");
    assert!(matches!(err, PoolError::AcquireTimeout { .. }), "{err}");

    let mut cfg = config(1, 1);
    cfg.acquire_timeout = Duration::from_secs(5);
    drop(held);
    pool.shutdown().await;

    let pool = h.pool(cfg).await;
    let held = pool.acquire().await.expect("slot");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for who in 0..3 {
        let (waiter_pool, order) = (pool.clone(), Arc::clone(&order));
        waiters.push(tokio::spawn(async move {
            let lease = waiter_pool.acquire().await.expect("slot");
            order.lock().expect("lock").push(who);
            // Hold it briefly, then pass it on.
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(lease);
        }));
        // Let each waiter queue before the next.
        settle(&pool, |s| s.waiting == who + 1).await;
    }
    drop(held);
    for waiter in waiters {
        waiter.await.expect("waiter");
    }
    assert_eq!(*order.lock().expect("lock"), vec![0, 1, 2]);
    pool.shutdown().await;
    assert_eq!(h.domains().await, 0);
}

#[tokio::test]
async fn a_dropped_acquire_never_loses_a_slot() {
    let h = harness().await;
    let pool = h.pool(config(1, 1)).await;
    for _ in 0..20 {
        let held = pool.acquire().await.expect("slot");
        // An acquire that is abandoned while it waits...
        let waiting = pool.acquire();
        let abandoned = tokio::time::timeout(Duration::from_millis(5), waiting).await;
        assert!(abandoned.is_err());
        // ...and one abandoned just as the slot comes back.
        let racing = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.acquire().await })
        };
        settle(&pool, |s| s.waiting == 1).await;
        drop(held);
        racing.abort();
        let _ = racing.await;
        // The one slot is still there and can be had.
        let again = pool.acquire().await.expect("the slot was not lost");
        drop(again);
        settle(&pool, |s| s.ready == 1).await;
    }
    let stats = pool.stats();
    assert_eq!((stats.total, stats.created), (1, 1), "{stats:?}");
    pool.shutdown().await;
}

#[tokio::test]
async fn failed_resets_and_creations_are_replaced() {
    let h = harness().await;
    let pool = h.pool(config(2, 2)).await;
    h.faults.resets.store(1, Ordering::SeqCst);
    h.faults.creates.store(2, Ordering::SeqCst);
    let lease = pool.acquire().await.expect("slot");
    drop(lease);
    // The failed reset destroys the slot; two creations fail; the third
    // makes the pool whole again.
    let stats = settle(&pool, |s| s.ready == 2 && s.created == 3).await;
    assert_eq!((stats.failed_resets, stats.destroyed), (1, 1), "{stats:?}");
    assert_eq!(h.domains().await, 2);
    pool.shutdown().await;
    assert_eq!(h.domains().await, 0);
}

#[tokio::test]
async fn failing_and_hanging_health_checks_replace_the_slot() {
    let h = harness().await;
    let mut cfg = config(1, 1);
    cfg.health_check_interval = Some(Duration::from_millis(50));
    cfg.operation_timeout = Duration::from_millis(200);
    let pool = h.pool(cfg).await;
    h.faults.checks.store(1, Ordering::SeqCst);
    settle(&pool, |s| s.destroyed == 1 && s.ready == 1).await;

    // A slot that never answers: the check times out, the slot goes.
    h.faults.hang_checks.store(true, Ordering::SeqCst);
    settle(&pool, |s| s.destroyed >= 2).await;
    h.faults.hang_checks.store(false, Ordering::SeqCst);
    settle(&pool, |s| s.ready == 1).await;
    assert_eq!(h.domains().await, 1);
    pool.shutdown().await;
    assert_eq!(h.domains().await, 0);
}

#[tokio::test]
async fn worn_out_slots_are_recycled() {
    let h = harness().await;
    let mut cfg = config(1, 1);
    cfg.max_uses = Some(2);
    let pool = h.pool(cfg).await;
    let first = pool.acquire().await.expect("slot").index();
    drop(pool.acquire().await.expect("slot"));
    // first acquire (use 1) was dropped above too: the slot is now worn out.
    settle(&pool, |s| s.ready == 1 && s.created == 2).await;
    let fresh = pool.acquire().await.expect("slot");
    assert_ne!(fresh.index(), first, "a new slot replaced the worn-out one");
    assert_eq!(fresh.uses(), 0);
    drop(fresh);
    pool.shutdown().await;
}

#[tokio::test]
async fn leftovers_of_a_crashed_process_are_removed_at_start() {
    let h = harness().await;
    // What a crash leaves, in each state: a golden template defined but not
    // started yet, a slot running, and a slot running with a snapshot taken.
    let mut golden = spec(100);
    golden.name = format!("paddock-{POOL}-golden-0123abcd");
    golden.metadata.role = DomainRole::Golden;
    h.libvirt.define(&golden).await.expect("define the golden");
    let running = h.libvirt.define(&spec(101)).await.expect("define");
    running.start().await.expect("start");
    let snapshotted = h.libvirt.define(&spec(102)).await.expect("define");
    snapshotted.start().await.expect("start");
    snapshotted
        .create_snapshot(&paddock_libvirt::SnapshotSpec {
            name: "golden".into(),
            description: String::new(),
            tags: Vec::new(),
        })
        .await
        .expect("snapshot");
    let mut other = spec(7);
    other.name = "paddock-other-7".into();
    other.metadata.pool = "other".into();
    h.libvirt
        .define(&other)
        .await
        .expect("another pool's domain");
    let pool_dir = h.dir.path().join(POOL);
    for dir in [
        "slot-100",
        "golden-0123abcd",
        "paddock-faults-golden-0123abcd",
    ] {
        std::fs::create_dir_all(pool_dir.join(dir).join("inner")).expect("a leftover directory");
    }
    std::fs::write(pool_dir.join("notes.txt"), b"not the pool's").expect("a foreign file");
    // A slot whose restore was cut short: half of its memory image.
    std::fs::write(pool_dir.join("slot-100").join("memory.img"), [0u8; 4096])
        .expect("a half image");
    assert_eq!(h.domains().await, 3);
    // What `Paddock::create_pool` runs, once, before it builds the golden.
    let removed = paddock::vm::recover_pool(&h.libvirt, POOL, &pool_dir)
        .await
        .expect("recovery");
    assert_eq!((removed, h.domains().await), (3, 0));
    assert!(
        h.libvirt.lookup("paddock-other-7").await.is_ok(),
        "another pool's domain stays"
    );
    for dir in [
        "slot-100",
        "golden-0123abcd",
        "paddock-faults-golden-0123abcd",
    ] {
        assert!(!pool_dir.join(dir).exists(), "{dir} is left");
    }
    assert!(
        pool_dir.join("notes.txt").exists(),
        "what is not the pool's stays"
    );
    let pool = h.pool(config(1, 1)).await;
    assert_eq!(h.domains().await, 1, "only the new pool's slot");
    pool.shutdown().await;
}

#[tokio::test]
async fn invalid_configurations_are_refused() {
    let h = harness().await;
    for (min_ready, max_size) in [(0, 0), (3, 2)] {
        let backend = TestDriverBackend {
            libvirt: h.libvirt.clone(),
            faults: Arc::default(),
            resets: AtomicU32::new(0),
        };
        let err = Pool::start(backend, config(min_ready, max_size))
            .await
            .expect_err("invalid");
        assert!(matches!(err, PoolError::Config(_)), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_destroys_the_slots() {
    let h = harness().await;
    let pool = h.pool(config(2, 3)).await;
    let clone = pool.clone();
    let lease = pool.acquire().await.expect("slot");
    settle(&pool, |s| s.ready == 2 && s.leased == 1).await;
    drop(pool);
    assert_eq!(h.domains().await, 3, "a clone still holds the pool");
    drop(clone);
    // The ready slots are gone when the drop returns; the leased one when
    // its lease ends.
    assert_eq!(h.domains().await, 1);
    drop(lease);
    for _ in 0..250 {
        if h.domains().await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the leased slot was not destroyed: {} domains",
        h.domains().await
    );
}

#[tokio::test]
async fn a_nat_filtered_pool_needs_a_reservation_per_slot_and_one_for_the_golden() {
    // Refused before anything is defined or booted, so the image's files
    // need not exist.
    let image = paddock::GuestImage {
        hash: "none".into(),
        kernel: "/nonexistent/vmlinuz".into(),
        initramfs: "/nonexistent/initramfs".into(),
        cmdline: String::new(),
        agent_serial_port: "org.paddock.agent.0".into(),
        agent_vsock_port: 1024,
        root_disk: None,
        build: None,
    };
    let mut settings = paddock::PaddockConfig::new(image);
    settings.libvirt_uri = "test:///default".into();
    let paddock = paddock::Paddock::connect(settings)
        .await
        .expect("test driver");
    let mut spec = paddock::VmPoolSpec::new("nat");
    spec.network = paddock::PoolNetwork::NatFiltered {
        network: paddock_libvirt::NetworkSpec {
            name: "pdk-nat".into(),
            bridge: "pdknat".into(),
            kind: paddock_libvirt::NetworkKind::Nat,
            subnet: std::net::Ipv4Addr::new(10, 213, 7, 0),
            slots: 3,
        },
        filters: Vec::new(),
        filter: "paddock-egress".into(),
    };
    let err = paddock
        .create_pool(spec, config(1, 3))
        .await
        .expect_err("three slots and a golden need four reservations");
    assert!(matches!(err, VmError::Config(_)), "{err}");
}

#[tokio::test]
async fn a_pool_whose_sockets_would_not_fit_is_refused_before_anything_is_made() {
    let image = paddock::GuestImage {
        hash: "none".into(),
        kernel: "/nonexistent/vmlinuz".into(),
        initramfs: "/nonexistent/initramfs".into(),
        cmdline: String::new(),
        agent_serial_port: "org.paddock.agent.0".into(),
        agent_vsock_port: 1024,
        root_disk: None,
        build: None,
    };
    let mut settings = paddock::PaddockConfig::new(image);
    settings.libvirt_uri = "test:///default".into();
    settings.state_root = "/var/lib/libvirt/qemu/a-state-root-that-is-rather-long".into();
    let paddock = paddock::Paddock::connect(settings)
        .await
        .expect("test driver");
    let err = paddock
        .create_pool(paddock::VmPoolSpec::new("a-pool-name-long"), config(1, 1))
        .await
        .expect_err("the golden's socket path is too long");
    let VmError::SocketPathTooLong { path, len } = &err else {
        panic!("not a socket path error: {err:?}");
    };
    assert!(*len > paddock::vm::SOCKET_PATH_MAX, "{err}");
    assert!(path.ends_with("agent.sock"), "{err}");
}

/// An image whose files need not exist: the tests below fail before any
/// is read.
fn no_image() -> paddock::GuestImage {
    paddock::GuestImage {
        hash: "none".into(),
        kernel: "/nonexistent/vmlinuz".into(),
        initramfs: "/nonexistent/initramfs".into(),
        cmdline: String::new(),
        agent_serial_port: "org.paddock.agent.0".into(),
        agent_vsock_port: 1024,
        root_disk: None,
        build: None,
    }
}

/// Names that would climb out of the state root, break XML or a domain
/// name, or are empty: each entry point refuses them before making
/// anything (and a name too long for it).
const BAD_NAMES: [&str; 6] = ["../escape", "a/b", "quote\"d", "<pool>", "has space", ""];

#[tokio::test]
async fn create_pool_refuses_bad_names_before_anything_is_made() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut settings = paddock::PaddockConfig::new(no_image());
    settings.libvirt_uri = "test:///default".into();
    settings.state_root = root.path().join("state");
    let paddock = paddock::Paddock::connect(settings)
        .await
        .expect("test driver");
    for name in BAD_NAMES.into_iter().chain(["a-name-too-long-for-a-pool"]) {
        let err = paddock
            .create_pool(paddock::VmPoolSpec::new(name), config(1, 1))
            .await
            .expect_err(name);
        assert!(matches!(err, VmError::Name(_)), "{name:?}: {err:?}");
        let rule = std::error::Error::source(&err)
            .expect("the rule")
            .to_string();
        assert!(rule.contains("pool name"), "{name:?}: {rule}");
    }
    assert!(
        !root.path().join("state").exists(),
        "nothing was made for a bad name"
    );
    assert!(!root.path().join("escape").exists());
}

#[tokio::test]
async fn sandbox_boot_and_recovery_refuse_bad_names() {
    let root = tempfile::tempdir().expect("tempdir");
    let libvirt = Libvirt::open("test:///default").await.expect("test driver");
    let too_long = "x".repeat(paddock::names::SANDBOX_NAME_MAX + 1);
    for name in BAD_NAMES.into_iter().chain([too_long.as_str()]) {
        let mut config = paddock::SandboxConfig::new(name);
        config.state_root = root.path().join("state");
        let err = paddock::Sandbox::boot(&libvirt, &no_image(), config)
            .await
            .expect_err(name);
        assert!(matches!(err, VmError::Name(_)), "{name:?}: {err:?}");
        let rule = std::error::Error::source(&err)
            .expect("the rule")
            .to_string();
        assert!(rule.contains("sandbox name"), "{name:?}: {rule}");
    }
    assert!(!root.path().join("state").exists(), "nothing was made");
    // Recovery (`paddock gc`) of a pool named by a domain's metadata or a
    // directory: a bad name removes nothing.
    let victim = root.path().join("slot-0");
    std::fs::create_dir(&victim).expect("mkdir");
    for name in ["..", "../x", "a/b"] {
        let err = paddock::vm::recover_pool(&libvirt, name, &root.path().join("state").join(name))
            .await
            .expect_err(name);
        assert!(matches!(err, VmError::Name(_)), "{name:?}: {err:?}");
    }
    assert!(victim.exists(), "a bad name removed nothing");
}
