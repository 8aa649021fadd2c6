//! Boot to agent ready, phase by phase, against its floor in the same run.
//!
//! Boots `PADDOCK_BOOTS` (default 5) sandboxes from `$PADDOCK_IMAGE` and,
//! interleaved with them, as many floors: the same kernel, command line,
//! devices and firmware with an initramfs of busybox alone whose `/init`
//! prints its uptime and powers off ([`paddock_benches::boot`]). With
//! `PADDOCK_IMAGE_BASELINE` set to another manifest, each round boots a
//! sandbox from that image too, so that two images compare in one run
//! (this machine is shared and noisy: only figures of one run compare).
//! Prints one JSON object: `boot_to_ready_ms`, `boot_phases_ms` (each
//! phase's p50/p99, see `paddock::BootPhases`), the floor's
//! `floor_wall_ms` and `floor_userspace_uptime_ms`, and the ratio of the
//! medians.
//!
//! Run as root with libvirtd running and an image built:
//! `PADDOCK_IMAGE=$(readlink -f target/paddock-image/current.json) cargo
//! bench -p paddock-benches --bench boot`.

use paddock::libvirt::Libvirt;
use paddock::{GuestImage, Sandbox, SandboxConfig};
use paddock_benches::Samples;
use paddock_benches::boot::{PhaseSamples, floor_boot, write_floor_initramfs};
use paddock_tests::vm::{DomainGuard, SYSTEM_URI, domain_dir, test_image};

/// The guest's memory, as the SLO harness boots it.
const GUEST_MIB: u64 = 256;

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

/// One image's figures.
#[derive(Default)]
struct ImageRuns {
    ready: Samples,
    phases: PhaseSamples,
    /// Boots that did not reach the agent (their error is printed).
    failed: usize,
}

impl ImageRuns {
    async fn boot(
        &mut self,
        libvirt: &Libvirt,
        image: &GuestImage,
        name: String,
    ) -> anyhow::Result<()> {
        let mut config = SandboxConfig::new(name);
        config.memory_mib = GUEST_MIB;
        config.pool = "bench-boot".into();
        let sandbox = match Sandbox::boot(libvirt, image, config).await {
            Ok(sandbox) => sandbox,
            // A guest that panics on a busy host (the old image's timer
            // check) is a figure too: counted, not fatal.
            Err(err) => {
                eprintln!("boot failed: {:#}", anyhow::Error::from(err));
                self.failed += 1;
                return Ok(());
            }
        };
        self.ready.push(sandbox.boot_to_ready());
        self.phases.push(sandbox.boot_phases());
        eprintln!("{:?}", sandbox.boot_phases());
        sandbox.destroy().await?;
        Ok(())
    }

    fn json(&mut self, image: &GuestImage) -> serde_json::Value {
        serde_json::json!({
            "image": image.hash,
            "cmdline": image.cmdline,
            "boot_to_ready_ms": self.ready.json(),
            "boot_phases_ms": self.phases.json(),
            "failed_boots": self.failed,
        })
    }
}

async fn run() -> anyhow::Result<()> {
    let boots: usize = std::env::var("PADDOCK_BOOTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let image = test_image()?;
    let baseline = match std::env::var_os("PADDOCK_IMAGE_BASELINE") {
        Some(path) => Some(GuestImage::load(std::path::Path::new(&path))?),
        None => None,
    };
    let libvirt = Libvirt::open(SYSTEM_URI).await?;
    let pid = std::process::id();
    let floor_name = format!("paddock-bench-floor-{pid}");
    let floor_dir = domain_dir(&floor_name)?;
    let _floor_guard = DomainGuard {
        name: floor_name.clone(),
        dir: floor_dir.clone(),
    };
    let floor_initramfs = floor_dir.join("floor.cpio");
    write_floor_initramfs(&floor_initramfs)?;

    let mut current = ImageRuns::default();
    let mut before = ImageRuns::default();
    let mut floor_wall = Samples::default();
    let mut floor_uptime = Samples::default();
    let mut floor_start = Samples::default();
    for round in 0..boots {
        current
            .boot(
                &libvirt,
                &image,
                format!("paddock-bench-boot-{pid}-{round}"),
            )
            .await?;
        if let Some(baseline) = &baseline {
            before
                .boot(
                    &libvirt,
                    baseline,
                    format!("paddock-bench-base-{pid}-{round}"),
                )
                .await?;
        }
        let floor = floor_boot(
            &libvirt,
            &image,
            &floor_initramfs,
            &floor_name,
            &floor_dir,
            GUEST_MIB,
        )
        .await?;
        eprintln!("floor: {floor:?}");
        floor_wall.push(floor.wall);
        floor_uptime.push(floor.userspace_uptime);
        floor_start.push(floor.start_call);
    }
    let mut report = current.json(&image);
    let floor_wall_json = floor_wall.json();
    let ratio = |value: &serde_json::Value| {
        let p50 = |v: &serde_json::Value| v["p50"].as_f64().unwrap_or(f64::NAN);
        (p50(value) / p50(&floor_wall_json) * 100.0).round() / 100.0
    };
    report["ratio_to_floor_p50"] = ratio(&report["boot_to_ready_ms"]).into();
    if let Some(baseline) = &baseline {
        let mut old = before.json(baseline);
        old["ratio_to_floor_p50"] = ratio(&old["boot_to_ready_ms"]).into();
        report["baseline"] = old;
    }
    report["floor_wall_ms"] = floor_wall_json;
    report["floor_userspace_uptime_ms"] = floor_uptime.json();
    report["floor_start_call_ms"] = floor_start.json();
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
