//! The libvirt layer against libvirt's in-process test driver. Each test opens
//! its own `test:///<file>.xml`, so tests share no state and run in parallel.
#![cfg(test)]

// The samples the golden files pin, so these tests define what they check.
#[path = "../../paddock-spec/tests/common/sample.rs"]
mod sample;

use std::time::Duration;

use paddock_libvirt::{
    Applied, DomainRole, DomainSpec, DomainState, Libvirt, LibvirtError, NetworkKind, RestoreMode,
    ShutdownOutcome, SnapshotSpec, Uuid, render_domain,
};
use sample::{Chan, Net};
use tempfile::TempDir;

/// A test-driver connection to a node file of its own, holding `extra` (XML
/// of other objects) and nothing else.
async fn connect(extra: &str) -> (Libvirt, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node.xml");
    std::fs::write(&node, format!("<node>{extra}</node>")).expect("write node file");
    let uri = format!("test://{}", node.display());
    (Libvirt::open(&uri).await.expect("test driver opens"), dir)
}

fn spec(name: &str) -> DomainSpec {
    let mut spec = sample::domain(Net::NatFiltered, Chan::VirtioSerial);
    spec.name = name.into();
    spec
}

#[tokio::test]
async fn lifecycle_walks_every_state() {
    let (lv, _dir) = connect("").await;
    let vm = lv.define(&spec("life")).await.expect("define");
    assert_eq!(
        vm.status().await.expect("status").state,
        DomainState::Shutoff
    );

    vm.start().await.expect("start");
    let running = vm
        .wait_for_state(DomainState::Running, Duration::from_secs(5))
        .await;
    assert_eq!(running.expect("running").reason, "booted");

    vm.pause().await.expect("pause");
    let paused = vm.status().await.expect("status");
    assert_eq!(
        (paused.state, paused.reason.as_str()),
        (DomainState::Paused, "user")
    );
    vm.resume().await.expect("resume");
    assert_eq!(
        vm.status().await.expect("status").state,
        DomainState::Running
    );

    // Nothing will make it pause now: the wait must end, with a timeout.
    let err = vm
        .wait_for_state(DomainState::Paused, Duration::from_millis(200))
        .await;
    match err {
        Err(LibvirtError::Timeout { wanted, last, .. }) => {
            assert_eq!((wanted, last), (DomainState::Paused, DomainState::Running));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    let outcome = vm.shutdown(Duration::from_secs(5)).await.expect("shutdown");
    assert_eq!(outcome, ShutdownOutcome::Graceful);
    assert_eq!(
        vm.status().await.expect("status").state,
        DomainState::Shutoff
    );

    vm.start().await.expect("start again");
    // Errors name the operation, the domain and libvirt's code.
    let err = vm
        .start()
        .await
        .expect_err("starting a running domain fails");
    let text = err.to_string();
    assert!(text.contains("start domain life (error code"), "{text}");
    assert!(!err.should_reconnect());

    vm.destroy().await.expect("destroy");
    let off = vm.status().await.expect("status");
    assert_eq!(
        (off.state, off.reason.as_str()),
        (DomainState::Shutoff, "destroyed")
    );

    vm.undefine().await.expect("undefine");
    let gone = lv.lookup("life").await.expect_err("undefined");
    assert!(gone.is_not_found(), "{gone}");
    assert_eq!(gone.code(), Some(42), "VIR_ERR_NO_DOMAIN: {gone}");
}

#[tokio::test]
async fn snapshots_keep_description_and_tags() {
    let (lv, _dir) = connect("").await;
    let vm = lv.define(&spec("snap")).await.expect("define");
    vm.start().await.expect("start");
    let golden = SnapshotSpec {
        name: "golden".into(),
        description: "agent ready".into(),
        tags: vec!["golden".into(), "web".into()],
    };
    let info = vm.create_snapshot(&golden).await.expect("snapshot");
    assert_eq!(
        (info.name.as_str(), info.state.as_str()),
        ("golden", "running")
    );
    assert_eq!(info.tags, golden.tags);

    vm.pause().await.expect("pause");
    let plain = SnapshotSpec {
        name: "plain".into(),
        description: String::new(),
        tags: vec![],
    };
    vm.create_snapshot(&plain).await.expect("second snapshot");

    let list = vm.snapshots().await.expect("list");
    let names: Vec<_> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 2);
    let listed = list
        .iter()
        .find(|s| s.name == "golden")
        .expect("golden listed");
    assert_eq!(listed.description, "agent ready");
    assert_eq!(listed.tags, ["golden", "web"]);
    let listed = list
        .iter()
        .find(|s| s.name == "plain")
        .expect("plain listed");
    assert_eq!(
        (listed.description.as_str(), listed.state.as_str()),
        ("", "paused")
    );
    assert!(listed.tags.is_empty());

    // Reverting to a snapshot taken running leaves the domain running.
    vm.revert_to_snapshot("golden").await.expect("revert");
    assert_eq!(
        vm.status().await.expect("status").state,
        DomainState::Running
    );

    vm.delete_snapshot("plain").await.expect("delete");
    let left = vm.snapshots().await.expect("list");
    assert_eq!(
        left.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["golden"]
    );
    let missing = vm.revert_to_snapshot("plain").await.expect_err("deleted");
    assert!(missing.is_not_found(), "{missing}");

    // A name that could carry a second monitor command never reaches
    // libvirt; the test driver has no QEMU monitor, and says so.
    let injected = vm
        .load_snapshot_in_place("golden\ninfo status")
        .await
        .expect_err("refused");
    assert!(
        matches!(&injected, LibvirtError::Monitor { command, .. } if command.starts_with("loadvm golden")),
        "{injected:?}"
    );
    let no_monitor = vm
        .load_snapshot_in_place("golden")
        .await
        .expect_err("no QEMU");
    assert!(
        matches!(no_monitor, LibvirtError::Call { .. }),
        "{no_monitor:?}"
    );

    let bad = SnapshotSpec {
        name: "x".into(),
        description: String::new(),
        tags: vec!["a,b".into()],
    };
    assert!(matches!(
        vm.create_snapshot(&bad).await,
        Err(LibvirtError::Xml { .. })
    ));

    // Undefining removes the remaining snapshot's metadata with the domain.
    vm.destroy().await.expect("destroy");
    vm.undefine().await.expect("undefine with a snapshot left");
    assert!(lv.lookup("snap").await.expect_err("gone").is_not_found());
}

#[tokio::test]
async fn save_and_restore_pass_the_edited_xml_to_libvirt() {
    let (lv, dir) = connect("").await;
    let vm = lv.define(&spec("saved")).await.expect("define");
    vm.start().await.expect("start");
    let image = dir.path().join("saved.img");
    vm.save(&image).await.expect("save");
    let status = vm.status().await.expect("status");
    assert_eq!(
        (status.state, status.reason.as_str()),
        (DomainState::Shutoff, "saved")
    );
    assert!(image.is_file());

    // The test driver refuses XML edits and modes: an edited restore must
    // reach it (the real daemon is covered by the system tests).
    let mut clone = spec("clone-1");
    clone.uuid = Uuid::new_v4();
    let err = lv
        .restore_as(&image, &clone, RestoreMode::AsSaved)
        .await
        .expect_err("dxml refused");
    assert_eq!(err.code(), Some(74), "VIR_ERR_ARGUMENT_UNSUPPORTED: {err}");
    let err = lv
        .restore(&image, None, RestoreMode::Paused)
        .await
        .expect_err("flags refused");
    assert!(err.to_string().contains("restore"), "{err}");

    lv.restore(&image, None, RestoreMode::AsSaved)
        .await
        .expect("restore as saved");
    let back = lv.lookup("saved").await.expect("restored domain");
    assert_eq!(
        back.status().await.expect("status").state,
        DomainState::Running
    );
}

#[tokio::test]
async fn metadata_round_trips_and_finds_paddock_domains() {
    // A domain someone else defined, which recovery must leave out.
    let foreign = "<domain type='test'><name>foreign</name><memory>65536</memory>\
                   <os><type>hvm</type></os></domain>";
    let (lv, _dir) = connect(foreign).await;
    let a = spec("pad-a");
    let mut b = spec("pad-b");
    b.uuid = Uuid::new_v4();
    b.metadata.role = DomainRole::Golden;
    b.metadata.golden = None;
    let vm = lv.define(&a).await.expect("define a");
    lv.define(&b).await.expect("define b");
    vm.start().await.expect("start");

    assert_eq!(
        vm.metadata().await.expect("metadata"),
        Some(a.metadata.clone())
    );
    let foreign_vm = lv.lookup("foreign").await.expect("foreign domain");
    assert_eq!(foreign_vm.metadata().await.expect("metadata"), None);

    let mut found = lv.paddock_domains().await.expect("list");
    found.sort_by(|x, y| x.0.name().cmp(y.0.name()));
    let found: Vec<_> = found.iter().map(|(vm, m)| (vm.name(), m)).collect();
    assert_eq!(found, [("pad-a", &a.metadata), ("pad-b", &b.metadata)]);
}

#[tokio::test]
async fn bulk_stats_cover_every_domain() {
    let (lv, _dir) = connect("").await;
    let vm = lv.define(&spec("busy")).await.expect("define");
    vm.start().await.expect("start");
    let mut idle = spec("idle");
    idle.uuid = Uuid::new_v4();
    lv.define(&idle).await.expect("define idle");

    let mut stats = lv.all_domain_stats().await.expect("stats");
    stats.sort_by(|a, b| a.name.cmp(&b.name));
    let states: Vec<_> = stats.iter().map(|s| (s.name.as_str(), s.state)).collect();
    assert_eq!(
        states,
        [
            ("busy", DomainState::Running),
            ("idle", DomainState::Shutoff)
        ]
    );
    // The test driver reports states only; the system tests check the counters.
}

#[tokio::test]
async fn networks_are_applied_idempotently() {
    let (lv, _dir) = connect("").await;
    for kind in [NetworkKind::Nat, NetworkKind::Isolated] {
        let mut net = sample::network(kind);
        assert_eq!(
            lv.apply_network(&net).await.expect("define"),
            Applied::Defined
        );
        assert_eq!(
            lv.apply_network(&net).await.expect("again"),
            Applied::Unchanged
        );
        net.slots += 1;
        assert_eq!(
            lv.apply_network(&net).await.expect("changed"),
            Applied::Redefined
        );
        assert_eq!(
            lv.apply_network(&net).await.expect("again"),
            Applied::Unchanged
        );
    }
}

#[tokio::test]
async fn bad_specs_fail_before_reaching_libvirt() {
    let (lv, _dir) = connect("").await;
    let mut bad = spec("bad");
    bad.profile = paddock_libvirt::Profile::Custom(paddock_libvirt::Resources {
        vcpus: 0,
        memory_mib: 64,
    });
    assert!(render_domain(&bad).is_err());
    let err = lv.define(&bad).await.expect_err("refused");
    assert!(matches!(err, LibvirtError::Xml { .. }), "{err}");
    assert!(
        lv.lookup("bad")
            .await
            .expect_err("never defined")
            .is_not_found()
    );
}
