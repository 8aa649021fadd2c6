//! A real boot's phases: the guest's marks reach the host, the phases come
//! in boot order, and together they account for the boot without
//! exceeding it. Also that the image boots the kernel it says it does.
#![cfg(test)]

use std::time::Duration;

use paddock::vm::boot_phases::GuestMarks;
use paddock_tests::vm::{TestSandbox, TestSandboxOptions, enabled, test_image};

type TestResult = anyhow::Result<()>;

/// Every phase a boot of the project's image has, in boot order.
const PHASES: [&str; 12] = [
    "start_call",
    "firmware",
    "kernel",
    "init",
    "mounts",
    "modules",
    "rcs_rest",
    "respawn",
    "port_wait",
    "agent_launch",
    "agent_exec",
    "agent_hello",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_reports_every_phase_in_order_and_they_add_up_to_the_total() -> TestResult {
    if !enabled("a_boot_reports_every_phase_in_order_and_they_add_up_to_the_total") {
        return Ok(());
    }
    let sandbox = TestSandbox::boot(TestSandboxOptions::default()).await?;
    let phases = sandbox.boot_phases().clone();
    eprintln!("{phases:#?}");
    let names: Vec<&str> = phases.phases().iter().map(|(name, _)| *name).collect();
    assert_eq!(names, PHASES, "{phases:?}");
    assert_eq!(phases.total(), sandbox.boot_to_ready());

    // The guest's own marks, read back from its console, never go back in
    // time and end before the agent was ready.
    let marks = GuestMarks::parse_console(&sandbox.console_tail(10_000))
        .ok_or_else(|| anyhow::anyhow!("no boot phases line on the console"))?;
    let uptimes = [
        marks.init,
        marks.rcs,
        marks.mounts,
        marks.modules,
        marks.rcs_end,
        marks.agent_run,
        marks.port,
        marks.agent,
    ];
    let uptimes: Vec<f64> = uptimes
        .iter()
        .map(|mark| mark.ok_or_else(|| anyhow::anyhow!("a mark is missing: {marks:?}")))
        .collect::<anyhow::Result<_>>()?;
    assert!(
        uptimes.windows(2).all(|pair| pair[0] <= pair[1]),
        "{marks:?}"
    );

    // The phases account for the whole boot: their sum is the total up to
    // the rounding of /proc/uptime (10 ms) and of the STATUS round trip.
    let gap = phases.sum().abs_diff(phases.total());
    assert!(gap <= Duration::from_millis(50), "{phases:?}");
    // The guest's part is the guest's uptime at ready: the host saw it
    // after starting the domain, so it is shorter than the boot.
    let guest: Duration = phases.phases()[2..].iter().map(|(_, d)| *d).sum();
    assert!(guest < phases.total(), "{phases:?}");
    sandbox.destroy().await
}

#[test]
fn the_image_boots_an_uncompressed_pvh_kernel_and_an_uncompressed_initramfs() -> TestResult {
    if !enabled("the_image_boots_an_uncompressed_pvh_kernel_and_an_uncompressed_initramfs") {
        return Ok(());
    }
    let image = test_image()?;
    let kernel = std::fs::read(&image.kernel)?;
    // An ELF executable, not a bzImage ("HdrS" at 0x202).
    assert_eq!(
        kernel.get(..4),
        Some(&b"\x7fELF"[..]),
        "{}",
        image.kernel.display()
    );
    let initramfs = std::fs::read(&image.initramfs)?;
    // A newc archive as it is, not gzip (1f 8b).
    assert_eq!(
        initramfs.get(..6),
        Some(&b"070701"[..]),
        "{}",
        image.initramfs.display()
    );
    Ok(())
}
