//! Rendering a sandbox's domain XML from its spec with quick-xml.
//!
//! The pool renders one document per domain it defines or restores; the
//! project's target is at most 20 µs per domain. Three variants: the default
//! (NAT-filtered network with its filter parameters, virtio-serial agent, kernel
//! boot with a disk overlay), no network with kernel vsock, and hybrid vsock
//! (shared memory backing and `<qemu:commandline>`).
//!
//! Run with `cargo bench -p paddock-benches --bench render`. It uses
//! `paddock-spec` only, so with `--no-default-features` it builds on a
//! machine without libvirt-dev.

// `criterion_group!` and `criterion_main!` generate public items without docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, criterion_group, criterion_main};
use paddock_spec::{
    Acceleration, AgentChannel, Boot, DomainRole, DomainSpec, ImageFormat, NetworkKind,
    NetworkMode, NetworkSpec, OverlayDisk, PaddockMetadata, Profile, Uuid, VsockCid, render_domain,
};

fn spec(channel: AgentChannel, network: NetworkMode) -> DomainSpec {
    let profile = Profile::Standard;
    DomainSpec {
        name: "paddock-web-17".into(),
        uuid: Uuid::from_u128(0x5ad0_c0de_0000_4000_8000_0000_0000_0017),
        metadata: PaddockMetadata {
            pool: "web".into(),
            role: DomainRole::Slot(17),
            image: "debian-12-agent".into(),
            golden: Some("web-golden-1".into()),
            created_unix: 1_767_225_600,
        },
        profile,
        tuning: profile.tuning(),
        acceleration: Acceleration::Tcg,
        boot: Boot::Kernel {
            kernel: "/var/lib/paddock/images/debian-12-agent/vmlinuz".into(),
            initrd: Some("/var/lib/paddock/images/debian-12-agent/initrd.img".into()),
            cmdline: "console=ttyS0 panic=-1 quiet".into(),
        },
        disk: Some(OverlayDisk {
            overlay: "/run/paddock/pool-web/17/disk.qcow2".into(),
            base: "/var/lib/paddock/images/debian-12-agent/rootfs.qcow2".into(),
            base_format: ImageFormat::Qcow2,
        }),
        console_log: "/run/paddock/pool-web/17/console.log".into(),
        channel,
        network,
        run_as: None,
        filesystems: Vec::new(),
        serial_ports: Vec::new(),
    }
}

fn render(c: &mut Criterion) {
    let net = NetworkSpec {
        name: "paddock-nat".into(),
        bridge: "pdk-nat0".into(),
        kind: NetworkKind::Nat,
        subnet: Ipv4Addr::new(10, 213, 0, 0),
        slots: 32,
    };
    let nat = net.attachment(17, "paddock-egress").expect("slot 17 of 32");
    let variants = [
        (
            "nat_filtered_virtio_serial",
            spec(
                AgentChannel::VirtioSerial {
                    socket: "/run/paddock/pool-web/17/agent.sock".into(),
                    name: "org.paddock.agent.0".into(),
                },
                NetworkMode::NatFiltered(nat),
            ),
        ),
        (
            "isolated_vsock",
            spec(AgentChannel::Vsock(VsockCid::Auto), NetworkMode::Isolated),
        ),
        (
            "isolated_hybrid_vsock",
            spec(
                AgentChannel::HybridVsock {
                    socket: "/run/paddock/pool-web/17/vhost.sock".into(),
                },
                NetworkMode::Isolated,
            ),
        ),
    ];
    let mut group = c.benchmark_group("render_domain");
    for (name, spec) in &variants {
        group.bench_function(*name, |b| {
            b.iter(|| render_domain(black_box(spec)).expect("renders"));
        });
    }
    group.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
