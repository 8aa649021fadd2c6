//! Boot figures: a sandbox's boot phases ([`paddock::BootPhases`])
//! gathered over several boots, and the floor they are measured against:
//! the same kernel, on the same devices and firmware, with an initramfs
//! of busybox alone whose `/init` prints the guest's uptime on the console
//! and powers off ([`floor_boot`](crate::boot::floor_boot)).
//!
//! Used by the `boot` bench (`cargo bench -p paddock-benches --bench
//! boot`) and by `slo` (its `boot_phases_ms` field).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use paddock::libvirt::{
    Acceleration, AgentChannel, Boot, DomainRole, DomainSpec, Libvirt, NetworkMode,
    PaddockMetadata, Profile, Resources, Uuid,
};
use paddock::{BootPhases, GuestImage};

use crate::Samples;

/// The floor's console line: `paddock-floor: uptime <seconds>`.
const FLOOR_PREFIX: &str = "paddock-floor: uptime ";

/// How long a floor boot may take before it counts as failed.
const FLOOR_TIMEOUT: Duration = Duration::from_secs(120);

/// Each phase's samples over several boots, in boot order, with the
/// boots' totals.
#[derive(Debug, Default)]
pub struct PhaseSamples {
    order: Vec<&'static str>,
    phases: BTreeMap<&'static str, Samples>,
    total: Samples,
}

impl PhaseSamples {
    /// Adds one boot's phases.
    pub fn push(&mut self, boot: &BootPhases) {
        for &(name, duration) in boot.phases() {
            if !self.order.contains(&name) {
                self.order.push(name);
            }
            self.phases.entry(name).or_default().push(duration);
        }
        self.total.push(boot.total());
    }

    /// `{"<phase>": {"p50", "p99", "n"}, ..., "total": {...}}` in
    /// milliseconds; keys keep boot order in `"order"`.
    #[must_use]
    pub fn json(&mut self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for name in &self.order {
            if let Some(samples) = self.phases.get_mut(name) {
                out.insert((*name).to_owned(), samples.json());
            }
        }
        out.insert("total".into(), self.total.json());
        out.insert("order".into(), serde_json::json!(self.order));
        serde_json::Value::Object(out)
    }
}

/// One boot of the floor.
#[derive(Debug, Clone, Copy)]
pub struct FloorBoot {
    /// From libvirt's start call to the floor's line on the console (the
    /// host polls the log every 5 ms).
    pub wall: Duration,
    /// The guest's uptime when its `/init` ran.
    pub userspace_uptime: Duration,
    /// libvirt's start call.
    pub start_call: Duration,
}

/// The floor's initramfs (busybox and a `/init` that prints its uptime and
/// powers off), written to `path`.
///
/// # Errors
/// `/bin/busybox` cannot be read or `path` written.
pub fn write_floor_initramfs(path: &Path) -> anyhow::Result<()> {
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox")?;
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n\
         read -r up _ </proc/uptime\necho \"{FLOOR_PREFIX}$up\"\n/bin/busybox poweroff -f\n"
    );
    let mut archive = Vec::new();
    let mut inode = 1u32;
    let mut entry = |name: &str, mode: u32, device: (u32, u32), data: &[u8]| {
        let header = format!(
            "070701{inode:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            device.0,
            device.1,
            name.len() + 1,
            0
        );
        inode += 1;
        archive.extend_from_slice(header.as_bytes());
        archive.extend_from_slice(name.as_bytes());
        archive.push(0);
        while archive.len() % 4 != 0 {
            archive.push(0);
        }
        archive.extend_from_slice(data);
        while archive.len() % 4 != 0 {
            archive.push(0);
        }
    };
    entry("bin", 0o040_755, (0, 0), &[]);
    entry("dev", 0o040_755, (0, 0), &[]);
    entry("proc", 0o040_755, (0, 0), &[]);
    entry("dev/console", 0o020_600, (5, 1), &[]);
    entry("bin/busybox", 0o100_755, (0, 0), &busybox);
    entry("bin/sh", 0o120_777, (0, 0), b"busybox");
    entry("init", 0o100_755, (0, 0), init.as_bytes());
    entry("TRAILER!!!", 0, (0, 0), &[]);
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&archive)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Boots the floor once: a domain rendered like a sandbox's (same kernel,
/// command line, devices, firmware and tuning, `memory_mib`, one vCPU)
/// with `initramfs` instead of the image's, named `name`, its files in
/// `dir` (which QEMU must reach). The domain is removed again.
///
/// # Errors
/// libvirt fails, or the floor's line does not appear within two minutes.
pub async fn floor_boot(
    libvirt: &Libvirt,
    image: &GuestImage,
    initramfs: &Path,
    name: &str,
    dir: &Path,
    memory_mib: u64,
) -> anyhow::Result<FloorBoot> {
    let resources = Resources {
        vcpus: 1,
        memory_mib,
    };
    let console = dir.join("console.log");
    let spec = DomainSpec {
        name: name.to_owned(),
        uuid: Uuid::new_v4(),
        metadata: PaddockMetadata {
            pool: "bench-floor".into(),
            role: DomainRole::Sandbox,
            image: image.hash.clone(),
            golden: None,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        },
        profile: Profile::Custom(resources),
        tuning: Profile::Custom(resources).tuning(),
        acceleration: Acceleration::Auto,
        boot: Boot::Kernel {
            kernel: image.kernel.clone(),
            initrd: Some(initramfs.to_path_buf()),
            cmdline: image.cmdline.clone(),
        },
        disk: None,
        console_log: console.clone(),
        channel: AgentChannel::VirtioSerial {
            socket: dir.join("agent.sock"),
            name: image.agent_serial_port.clone(),
        },
        network: NetworkMode::Isolated,
        run_as: None,
        filesystems: Vec::new(),
        serial_ports: Vec::new(),
        ksm_mergeable: true,
    };
    let vm = libvirt.define(&spec).await?;
    let outcome = async {
        let started = Instant::now();
        vm.start().await?;
        let start_call = started.elapsed();
        loop {
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            if let Some(uptime) = log
                .lines()
                .find_map(|line| line.trim_end().strip_prefix(FLOOR_PREFIX))
            {
                let wall = started.elapsed();
                let seconds: f64 = uptime.parse().context("the floor's uptime")?;
                return Ok(FloorBoot {
                    wall,
                    userspace_uptime: Duration::try_from_secs_f64(seconds)?,
                    start_call,
                });
            }
            anyhow::ensure!(
                started.elapsed() < FLOOR_TIMEOUT,
                "the floor printed no uptime in {FLOOR_TIMEOUT:?}: {log}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    .await;
    vm.discard().await?;
    outcome
}
