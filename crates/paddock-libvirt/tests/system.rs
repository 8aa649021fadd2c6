//! The libvirt layer against a real libvirtd (`qemu:///system`, TCG guests).
//!
//! These run only when `PADDOCK_LIBVIRT_SYSTEM_TESTS` is set (`cargo xtask
//! test` sets it after starting libvirtd); otherwise each test says on stderr
//! that it was skipped. Guests are tiny (64 MiB, SeaBIOS, an empty disk, no
//! network option ROM) and send no traffic; firewall rules are only read.
#![cfg(test)]

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use paddock_libvirt::{
    Acceleration, AgentChannel, Applied, Boot, DomainRole, DomainSpec, DomainState,
    FilterDefinition, ImageFormat, Libvirt, LibvirtError, NetworkKind, NetworkMode, NetworkSpec,
    OverlayDisk, PaddockMetadata, Profile, Resources, RestoreMode, SnapshotSpec, Uuid,
    create_overlay, load_filters, remove_overlay,
};
use tempfile::TempDir;

const URI: &str = "qemu:///system";
const WAIT: Duration = Duration::from_secs(30);

fn enabled(test: &str) -> bool {
    if std::env::var_os("PADDOCK_LIBVIRT_SYSTEM_TESTS").is_some() {
        return true;
    }
    // Straight to stderr: libtest would swallow `eprintln!` of a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: set PADDOCK_LIBVIRT_SYSTEM_TESTS=1 with libvirtd running (cargo xtask test does)"
    );
    false
}

/// Runs `virsh` for clean-up, ignoring failures (the object may be gone).
fn virsh(args: &[&str]) {
    let _ = Command::new("virsh")
        .args(["-q", "-c", URI])
        .args(args)
        .output();
}

/// Destroys and undefines domains when a test ends, passed or not.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            virsh(&["destroy", name]);
            virsh(&["undefine", name, "--snapshots-metadata", "--managed-save"]);
        }
    }
}

/// A directory QEMU (user libvirt-qemu) can reach, with an empty qcow2 base.
fn workdir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("paddock-libvirt-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.path().join("base.qcow2"))
        .arg("16M")
        .status()
        .expect("qemu-img runs");
    assert!(status.success(), "qemu-img create failed");
    dir
}

/// A 64 MiB SeaBIOS guest with an overlay disk (nothing bootable on it).
fn tiny(name: &str, slot: u32, dir: &Path, network: NetworkMode) -> DomainSpec {
    let profile = Profile::Custom(Resources {
        vcpus: 1,
        memory_mib: 64,
    });
    DomainSpec {
        name: name.into(),
        uuid: Uuid::new_v4(),
        metadata: PaddockMetadata {
            pool: "systest".into(),
            role: DomainRole::Slot(slot),
            image: "empty".into(),
            golden: None,
            created_unix: 1_767_225_600,
        },
        profile,
        tuning: profile.tuning(),
        acceleration: Acceleration::Auto,
        boot: Boot::Disk,
        disk: Some(OverlayDisk {
            overlay: dir.join(format!("{name}.qcow2")),
            base: dir.join("base.qcow2"),
            base_format: ImageFormat::Qcow2,
        }),
        console_log: dir.join(format!("{name}.log")),
        channel: AgentChannel::VirtioSerial {
            socket: dir.join(format!("{name}.sock")),
            name: "org.paddock.agent.0".into(),
        },
        network,
        run_as: None,
        filesystems: Vec::new(),
        serial_ports: Vec::new(),
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

#[tokio::test]
async fn smoke_define_start_pause_resume_destroy_undefine() {
    if !enabled("smoke_define_start_pause_resume_destroy_undefine") {
        return;
    }
    let dir = workdir();
    let name = unique("paddock-systest-smoke");
    let _cleanup = Cleanup(vec![name.clone()]);
    let spec = tiny(&name, 0, dir.path(), NetworkMode::Isolated);
    let disk = spec.disk.clone().expect("disk");
    create_overlay(&disk).await.expect("overlay");

    let lv = Libvirt::open(URI).await.expect("libvirtd answers");
    let vm = lv.define(&spec).await.expect("define");
    assert!(
        vm.xml().await.expect("xml").contains("<domain type='qemu'"),
        "TCG on this host"
    );
    vm.start().await.expect("start");
    vm.wait_for_state(DomainState::Running, WAIT)
        .await
        .expect("running");

    vm.pause().await.expect("pause");
    let paused = vm
        .wait_for_state(DomainState::Paused, WAIT)
        .await
        .expect("paused");
    assert_eq!(paused.reason, "user");
    vm.resume().await.expect("resume");
    vm.wait_for_state(DomainState::Running, WAIT)
        .await
        .expect("running again");

    let stats = lv.all_domain_stats().await.expect("stats");
    let mine = stats.iter().find(|s| s.name == name).expect("own stats");
    assert_eq!(mine.state, DomainState::Running);
    assert!(mine.cpu_time_ns > 0, "{mine:?}");
    assert_eq!(mine.memory_kib, 64 * 1024);
    assert_eq!(
        mine.block.first().map(|b| b.name.as_str()),
        Some("vda"),
        "{mine:?}"
    );

    vm.destroy().await.expect("destroy");
    let off = vm
        .wait_for_state(DomainState::Shutoff, WAIT)
        .await
        .expect("off");
    assert_eq!(off.reason, "destroyed");
    vm.undefine().await.expect("undefine");
    assert!(
        lv.lookup(&name)
            .await
            .expect_err("undefined")
            .is_not_found()
    );
    remove_overlay(&disk).await.expect("remove overlay");
    assert!(!disk.overlay.exists());
}

#[tokio::test]
async fn snapshots_then_save_and_restore_with_edited_xml() {
    if !enabled("snapshots_then_save_and_restore_with_edited_xml") {
        return;
    }
    let dir = workdir();
    let name = unique("paddock-systest-golden");
    let _cleanup = Cleanup(vec![name.clone(), format!("{name}-renamed")]);
    let golden = tiny(&name, 0, dir.path(), NetworkMode::Isolated);
    // The restored domain: same identity, its own overlay, socket, console
    // log and metadata.
    let mut edited = tiny(&name, 5, dir.path(), NetworkMode::Isolated);
    edited.uuid = golden.uuid;
    edited.metadata.golden = Some("systest-golden".into());
    edited.disk = Some(OverlayDisk {
        overlay: dir.path().join("edited.qcow2"),
        ..golden.disk.clone().expect("disk")
    });
    edited.console_log = dir.path().join("edited.log");
    edited.channel = AgentChannel::VirtioSerial {
        socket: dir.path().join("edited.sock"),
        name: "org.paddock.agent.0".into(),
    };
    for spec in [&golden, &edited] {
        create_overlay(spec.disk.as_ref().expect("disk"))
            .await
            .expect("overlay");
    }

    let lv = Libvirt::open(URI).await.expect("libvirtd answers");
    let vm = lv.define(&golden).await.expect("define");
    vm.start().await.expect("start");
    vm.wait_for_state(DomainState::Running, WAIT)
        .await
        .expect("running");

    // Internal snapshot with memory, kept in the qcow2 overlay.
    let snap = SnapshotSpec {
        name: "golden".into(),
        description: "SeaBIOS idling".into(),
        tags: vec!["golden".into(), "systest".into()],
    };
    vm.create_snapshot(&snap).await.expect("snapshot");
    let listed = vm.snapshots().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, "running");
    assert_eq!(
        (listed[0].description.as_str(), &listed[0].tags),
        ("SeaBIOS idling", &snap.tags)
    );
    vm.pause().await.expect("pause");
    vm.revert_to_snapshot("golden").await.expect("revert");
    vm.wait_for_state(DomainState::Running, WAIT)
        .await
        .expect("running after revert");

    // The same snapshot, loaded inside the running QEMU; QEMU's own
    // refusal comes back as a typed error with its message.
    vm.load_snapshot_in_place("golden")
        .await
        .expect("load in place");
    vm.wait_for_state(DomainState::Running, WAIT)
        .await
        .expect("running after loading in place");
    let missing = vm
        .load_snapshot_in_place("missing")
        .await
        .expect_err("no such snapshot");
    assert!(
        matches!(&missing, LibvirtError::Monitor { message, .. } if message.contains("missing")),
        "{missing:?}"
    );
    // QEMU stops the guest before loading and resumes it only on success.
    vm.wait_for_state(DomainState::Paused, WAIT)
        .await
        .expect("paused after a failed load");
    vm.resume().await.expect("resume");
    vm.delete_snapshot("golden").await.expect("delete snapshot");
    assert!(vm.snapshots().await.expect("list").is_empty());

    let image = dir.path().join("golden.save");
    vm.save(&image).await.expect("save");
    assert_eq!(vm.status().await.expect("status").reason, "saved");

    // libvirt 9.0 refuses another name (and UUID, and MAC) in the edited XML.
    let mut renamed = edited.clone();
    renamed.name = format!("{name}-renamed");
    let err = lv
        .restore_as(&image, &renamed, RestoreMode::Paused)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Some(67), "VIR_ERR_CONFIG_UNSUPPORTED: {err}");

    let restored = lv
        .restore_as(&image, &edited, RestoreMode::Paused)
        .await
        .expect("restore");
    assert_eq!(
        restored.status().await.expect("status").state,
        DomainState::Paused
    );
    assert_eq!(
        restored.metadata().await.expect("metadata"),
        Some(edited.metadata.clone())
    );
    let xml = restored.xml().await.expect("xml");
    for path in ["edited.qcow2", "edited.log", "edited.sock"] {
        assert!(
            xml.contains(&dir.path().join(path).display().to_string()),
            "{path} in {xml}"
        );
    }
    restored.resume().await.expect("resume");
    restored
        .wait_for_state(DomainState::Running, WAIT)
        .await
        .expect("runs");
    let ours = lv.paddock_domains().await.expect("list");
    assert!(
        ours.iter()
            .any(|(vm, m)| vm.name() == name && m.role == DomainRole::Slot(5)),
        "recovered by metadata"
    );

    // SeaBIOS ignores ACPI: the graceful shutdown falls back to destroy.
    let outcome = restored
        .shutdown(Duration::from_secs(2))
        .await
        .expect("shutdown");
    assert_eq!(outcome, paddock_libvirt::ShutdownOutcome::Destroyed);
    restored.undefine().await.expect("undefine");
}

#[tokio::test]
async fn networks_and_filters_apply_idempotently_and_program_the_firewall() {
    if !enabled("networks_and_filters_apply_idempotently_and_program_the_firewall") {
        return;
    }
    let lv = Libvirt::open(URI).await.expect("libvirtd answers");
    let repo_filters = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nwfilters");

    // The real filters: defined or already there, then unchanged.
    for filter in load_filters(&repo_filters).expect("filters") {
        let first = lv.apply_filter(&filter).await.expect("apply");
        assert!(matches!(
            first,
            Applied::Defined | Applied::Unchanged | Applied::Redefined
        ));
        assert_eq!(
            lv.apply_filter(&filter).await.expect("again"),
            Applied::Unchanged
        );
    }

    // A private copy walks define, unchanged, redefined.
    let test_name = unique("paddock-systest-drop");
    let drop_all =
        std::fs::read_to_string(repo_filters.join("paddock-drop-all.xml")).expect("file");
    let copy = drop_all.replace("name='paddock-drop-all'", &format!("name='{test_name}'"));
    let filter = FilterDefinition::parse(copy.clone()).expect("filter");
    let changed =
        FilterDefinition::parse(copy.replace("priority='1000'", "priority='900'")).expect("filter");
    let results = [
        lv.apply_filter(&filter).await.expect("define"),
        lv.apply_filter(&filter).await.expect("again"),
        lv.apply_filter(&changed).await.expect("changed"),
        lv.apply_filter(&changed).await.expect("again"),
    ];
    virsh(&["nwfilter-undefine", &test_name]);
    assert_eq!(
        results,
        [
            Applied::Defined,
            Applied::Unchanged,
            Applied::Redefined,
            Applied::Unchanged
        ]
    );

    // A NAT network of its own.
    let third = u8::try_from(std::process::id() % 200 + 20).expect("fits");
    let mut net = NetworkSpec {
        name: unique("pdk-systest"),
        bridge: format!("pdkst{}", std::process::id() % 100_000),
        kind: NetworkKind::Nat,
        subnet: Ipv4Addr::new(10, 213, third, 0),
        slots: 2,
    };
    struct NetCleanup(String);
    impl Drop for NetCleanup {
        fn drop(&mut self) {
            virsh(&["net-destroy", &self.0]);
            virsh(&["net-undefine", &self.0]);
        }
    }
    let _net_cleanup = NetCleanup(net.name.clone());
    assert_eq!(
        lv.apply_network(&net).await.expect("define"),
        Applied::Defined
    );
    assert_eq!(
        lv.apply_network(&net).await.expect("again"),
        Applied::Unchanged
    );
    net.slots = 3;
    assert_eq!(
        lv.apply_network(&net).await.expect("changed"),
        Applied::Redefined
    );
    assert_eq!(
        lv.apply_network(&net).await.expect("again"),
        Applied::Unchanged
    );
    let hosts = std::fs::read_to_string(format!("/var/lib/libvirt/dnsmasq/{}.hostsfile", net.name))
        .expect("dnsmasq hosts file");
    assert_eq!(
        hosts.lines().count(),
        3,
        "one reservation per slot: {hosts}"
    );

    // A guest behind the egress filter: read the rules libvirt generated.
    let dir = workdir();
    let name = unique("paddock-systest-filtered");
    let _cleanup = Cleanup(vec![name.clone()]);
    let nat = net.attachment(1, "paddock-egress").expect("slot 1");
    let spec = tiny(&name, 1, dir.path(), NetworkMode::NatFiltered(nat.clone()));
    create_overlay(spec.disk.as_ref().expect("disk"))
        .await
        .expect("overlay");
    let vm = lv.define(&spec).await.expect("define");
    vm.start().await.expect("start");
    let xml = vm.xml().await.expect("xml");
    let tap = xml
        .split("<interface")
        .nth(1)
        .and_then(|iface| iface.split("<target dev='").nth(1))
        .and_then(|rest| rest.split('\'').next())
        .expect("tap device in live XML")
        .to_owned();
    let read = |cmd: &[&str]| {
        let out = Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .expect("firewall tool runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let iptables = read(&["iptables-save"]);
    let ebtables = read(&["ebtables", "-t", "nat", "-L"]);
    vm.destroy().await.expect("destroy");
    vm.undefine().await.expect("undefine");

    let mine: Vec<&str> = iptables.lines().filter(|l| l.contains(&tap)).collect();
    let rules = mine.join("\n");
    for port in ["80", "443", "22", "9418"] {
        assert!(
            rules.contains(&format!("--dport {port} ")),
            "no rule for port {port}:\n{rules}"
        );
    }
    for range in [
        "169.254.0.0/16",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
    ] {
        assert!(rules.contains(range), "no rule for {range}:\n{rules}");
    }
    assert!(
        rules.contains(&format!("-d {}/32 -p udp", nat.gateway)),
        "DNS to the gateway:\n{rules}"
    );
    assert!(rules.contains("ESTABLISHED"), "replies allowed:\n{rules}");
    let mac = nat.mac.to_string();
    assert!(
        ebtables.contains(&tap) && ebtables.to_lowercase().contains(&mac),
        "anti-spoofing:\n{ebtables}"
    );
    assert!(
        ebtables.contains(&nat.ip.to_string()),
        "IP pinned without learning:\n{ebtables}"
    );
}
