//! Golden-file and schema tests of every XML document Paddock generates.
//!
//! Golden files live in `tests/golden/`; `PADDOCK_BLESS=1 cargo test -p
//! paddock-spec --test render` rewrites them from the current rendering.
//! Schema checks run libvirt's own `virt-xml-validate` (package
//! libvirt-clients) and fail if it is missing.
#![cfg(test)]

#[path = "common/sample.rs"]
mod sample;

use std::path::{Path, PathBuf};
use std::process::Command;

use paddock_spec::{
    Acceleration, Boot, CpuQuota, DacLabel, FilesystemDevice, NetworkKind, SerialPort,
    SnapshotSpec, TCG_TB_CACHE_MIB, Tuning, XmlError, load_filters, render_domain, render_network,
    render_snapshot,
};
use sample::{Chan, Net};

const NETS: [(Net, &str); 3] = [
    (Net::NatFiltered, "nat-filtered"),
    (Net::Isolated, "isolated"),
    (Net::Bridge, "bridge"),
];
const CHANS: [(Chan, &str); 3] = [
    (Chan::Vsock, "vsock"),
    (Chan::VirtioSerial, "virtio-serial"),
    (Chan::HybridVsock, "hybrid-vsock"),
];

/// Every generated document: (golden file name, libvirt schema, XML).
fn documents() -> Vec<(String, &'static str, String)> {
    let mut docs = Vec::new();
    for (net, net_name) in NETS {
        for (chan, chan_name) in CHANS {
            let xml = render_domain(&sample::domain(net, chan)).expect("renders");
            docs.push((format!("domain-{net_name}-{chan_name}.xml"), "domain", xml));
        }
    }
    let mut disk_boot = sample::domain(Net::Isolated, Chan::VirtioSerial);
    disk_boot.boot = Boot::Disk;
    disk_boot.tuning = Tuning {
        memory_soft_limit_mib: Some(1024),
        ..disk_boot.profile.tuning()
    };
    docs.push((
        "domain-disk-boot.xml".into(),
        "domain",
        render_domain(&disk_boot).expect("renders"),
    ));
    let mut run_as = sample::domain(Net::Isolated, Chan::VirtioSerial);
    run_as.run_as = Some(DacLabel { uid: 995, gid: 995 });
    docs.push((
        "domain-run-as.xml".into(),
        "domain",
        render_domain(&run_as).expect("renders"),
    ));
    let mut shares = sample::domain(Net::Isolated, Chan::VirtioSerial);
    shares.filesystems = vec![
        FilesystemDevice {
            source_dir: "/var/lib/libvirt/qemu/paddock/box.shares/data".into(),
            tag: "data".into(),
        },
        FilesystemDevice {
            source_dir: "/srv/scratch & out".into(),
            tag: "out".into(),
        },
    ];
    docs.push((
        "domain-shared-folders.xml".into(),
        "domain",
        render_domain(&shares).expect("renders"),
    ));
    let mut probe_port = sample::domain(Net::Isolated, Chan::VirtioSerial);
    probe_port.serial_ports = vec![SerialPort {
        socket: "/var/lib/libvirt/qemu/paddock/box/probe.sock".into(),
        name: "org.paddock.probe.0".into(),
    }];
    docs.push((
        "domain-probe-port.xml".into(),
        "domain",
        render_domain(&probe_port).expect("renders"),
    ));
    for (kind, name) in [
        (NetworkKind::Nat, "nat"),
        (NetworkKind::Isolated, "isolated"),
    ] {
        let xml = render_network(&sample::network(kind)).expect("renders");
        docs.push((format!("network-{name}.xml"), "network", xml));
    }
    let snapshot = SnapshotSpec {
        name: "golden".into(),
        description: "Booted, agent ready".into(),
        tags: vec!["golden".into(), "web".into()],
    };
    docs.push((
        "snapshot.xml".into(),
        "domainsnapshot",
        render_snapshot(&snapshot).expect("renders"),
    ));
    docs
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn renderings_match_golden_files() {
    let bless = std::env::var_os("PADDOCK_BLESS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (name, _, xml) in documents() {
        let path = golden_dir().join(&name);
        if bless {
            std::fs::write(&path, &xml).expect("write golden file");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(golden) if golden == xml => {}
            Ok(golden) => stale.push(format!(
                "{name} differs:\n--- golden\n{golden}\n+++ rendered\n{xml}"
            )),
            Err(e) => stale.push(format!("{name}: {e}")),
        }
    }
    assert!(
        stale.is_empty(),
        "run with PADDOCK_BLESS=1 to accept:\n{}",
        stale.join("\n")
    );
}

#[test]
fn golden_directory_has_no_orphans() {
    let expected: Vec<String> = documents().into_iter().map(|(name, ..)| name).collect();
    for entry in std::fs::read_dir(golden_dir()).expect("golden dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(
            expected.contains(&name),
            "golden file {name} is not rendered by any test"
        );
    }
}

fn validate(schema: &str, path: &Path) {
    let output = Command::new("virt-xml-validate")
        .arg(path)
        .arg(schema)
        .output()
        .unwrap_or_else(|e| {
            panic!("virt-xml-validate is required (apt-get install libvirt-clients): {e}")
        });
    assert!(
        output.status.success(),
        "{} does not validate against libvirt's {schema} schema:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn generated_domains_networks_and_snapshots_validate_against_libvirt_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let docs = documents();
    assert_eq!(docs.len(), 9 + 4 + 2 + 1);
    for (name, schema, xml) in docs {
        let path = dir.path().join(name);
        std::fs::write(&path, xml).expect("write");
        validate(schema, &path);
    }
}

#[test]
fn nwfilter_files_validate_against_libvirt_schema() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nwfilters");
    let filters = load_filters(&dir).expect("filters load");
    let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["paddock-drop-all", "paddock-egress"]);
    for filter in &filters {
        validate("nwfilter", &dir.join(format!("{}.xml", filter.name)));
    }
}

#[test]
fn egress_filter_has_the_rules_the_design_requires() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nwfilters");
    let xml = std::fs::read_to_string(dir.join("paddock-egress.xml")).expect("egress filter");
    for needle in [
        "<filterref filter='clean-traffic'/>",
        "<udp dstipaddr='255.255.255.255' srcportstart='68' dstportstart='67'/>",
        "<udp dstipaddr='$GATEWAY' srcportstart='68' dstportstart='67'/>",
        "<udp srcipaddr='$GATEWAY' srcportstart='67' dstportstart='68'/>",
        "<udp dstipaddr='$GATEWAY' dstportstart='53' state='NEW'/>",
        "<tcp dstipaddr='$GATEWAY' dstportstart='53' state='NEW'/>",
        "<all state='ESTABLISHED,RELATED'/>",
        "<all dstipaddr='$GATEWAY'/>",
        "<all dstipaddr='169.254.0.0' dstipmask='16'/>",
        "<all dstipaddr='10.0.0.0' dstipmask='8'/>",
        "<all dstipaddr='172.16.0.0' dstipmask='12'/>",
        "<all dstipaddr='192.168.0.0' dstipmask='16'/>",
        "<tcp dstportstart='80' state='NEW'/>",
        "<tcp dstportstart='443' state='NEW'/>",
        "<tcp dstportstart='22' state='NEW'/>",
        "<tcp dstportstart='9418' state='NEW'/>",
        "<rule action='drop' direction='inout' priority='1000'>\n    <all/>",
    ] {
        assert!(xml.contains(needle), "egress filter lacks {needle}");
    }
}

#[test]
fn the_translation_cache_is_bounded_under_tcg_and_cgroup_only_limits_stay_out_of_the_xml() {
    let mut spec = sample::domain(Net::Isolated, Chan::VirtioSerial);
    assert!(spec.tuning.memory_hard_limit_mib.is_some() && spec.tuning.pids_max.is_some());
    let tcg = render_domain(&spec).expect("renders");
    assert!(
        tcg.contains(&format!(
            "<tcg>\n      <tb-cache unit=\"MiB\">{TCG_TB_CACHE_MIB}</tb-cache>\n    </tcg>"
        )),
        "{tcg}"
    );
    // libvirt's <hard_limit> would raise RLIMIT_MEMLOCK, which a container
    // refuses; Paddock writes the cgroup itself.
    assert!(!tcg.contains("hard_limit"), "{tcg}");
    spec.acceleration = Acceleration::Kvm;
    let kvm = render_domain(&spec).expect("renders");
    assert!(
        !kvm.contains("<tcg>"),
        "a KVM domain has no TCG features: {kvm}"
    );
    spec.acceleration = Acceleration::Tcg;
    spec.tuning.tcg_tb_cache_mib = None;
    assert!(!render_domain(&spec).expect("renders").contains("<tcg>"));
}

#[test]
fn limits_that_could_not_work_are_refused() {
    let base = sample::domain(Net::Isolated, Chan::VirtioSerial);
    let memory_mib = base.profile.resources().memory_mib;
    let cases: [(&str, Tuning); 6] = [
        (
            "hard limit at the guest's memory",
            Tuning {
                memory_hard_limit_mib: Some(memory_mib),
                ..base.tuning
            },
        ),
        (
            "no threads",
            Tuning {
                pids_max: Some(0),
                ..base.tuning
            },
        ),
        (
            "an empty translation cache",
            Tuning {
                tcg_tb_cache_mib: Some(0),
                ..base.tuning
            },
        ),
        (
            "a quota below libvirt's minimum",
            Tuning {
                cpu_quota: Some(CpuQuota {
                    period_us: 100_000,
                    quota_us: 999,
                }),
                ..base.tuning
            },
        ),
        (
            "a period below libvirt's range",
            Tuning {
                cpu_quota: Some(CpuQuota {
                    period_us: 999,
                    quota_us: 1000,
                }),
                ..base.tuning
            },
        ),
        (
            "a period above libvirt's range",
            Tuning {
                cpu_quota: Some(CpuQuota {
                    period_us: 1_000_001,
                    quota_us: 1000,
                }),
                ..base.tuning
            },
        ),
    ];
    for (what, tuning) in cases {
        let mut spec = base.clone();
        spec.tuning = tuning;
        assert!(
            matches!(render_domain(&spec), Err(XmlError::InvalidSpec(_))),
            "{what} was accepted"
        );
    }
    let mut edge = base.clone();
    edge.tuning = Tuning {
        memory_hard_limit_mib: Some(memory_mib + 1),
        pids_max: Some(1),
        tcg_tb_cache_mib: Some(1),
        cpu_quota: Some(CpuQuota {
            period_us: 1000,
            quota_us: 1000,
        }),
        ..base.tuning
    };
    render_domain(&edge).expect("the smallest workable limits render");
}
