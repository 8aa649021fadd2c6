//! Stopping and starting the host's libvirtd, for the tests that fault it.
//!
//! libvirtd is started the way `cargo xtask` starts it (its `host.rs`): in a
//! session of its own, under `tini -s` (a child subreaper that reaps QEMU at
//! once), its output appended to `/var/log/libvirt/libvirtd-console.log`.
//! These tests disturb every other test that talks to libvirtd, so they run
//! only with `PADDOCK_HOST_FAULT_TESTS` set: `cargo xtask test` sets it on a
//! second test run, after the others and alone.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::vm::SYSTEM_URI;

/// Whether the tests that restart libvirtd or fill disks run; prints why a
/// test was skipped otherwise.
#[must_use]
pub fn host_fault_tests_enabled(test: &str) -> bool {
    let on = std::env::var_os("PADDOCK_HOST_FAULT_TESTS").is_some() && crate::vm::enabled(test);
    if !on {
        eprintln!(
            "SKIPPED {test}: it restarts libvirtd; set PADDOCK_HOST_FAULT_TESTS=1 \
             (cargo xtask test runs it alone)"
        );
    }
    on
}

/// The pids of the running libvirtd processes.
fn libvirtd_pids() -> Vec<u32> {
    crate::processes_running("/usr/sbin/libvirtd")
}

/// Stops libvirtd (SIGTERM, then SIGKILL after 10 s) and waits until it is
/// gone. Running domains keep running: their QEMU processes do not belong
/// to libvirtd.
///
/// # Errors
/// libvirtd does not end.
pub fn stop() -> anyhow::Result<()> {
    let pids = libvirtd_pids();
    for signal in ["-TERM", "-KILL"] {
        for pid in &pids {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if libvirtd_pids().is_empty() {
                // Its pidfile would keep the next one from starting.
                let _ = std::fs::remove_file("/run/libvirtd.pid");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    bail!("libvirtd {pids:?} did not end")
}

/// Starts libvirtd as `cargo xtask` does and waits up to 30 s until it
/// answers on `qemu:///system`.
///
/// # Errors
/// It cannot be started or does not answer.
pub fn start() -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/var/log/libvirt/libvirtd-console.log")
        .context("opening libvirtd's console log")?;
    Command::new("setsid")
        .args(["tini", "-s", "--", "/usr/sbin/libvirtd"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting libvirtd under tini")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let answered = Command::new("timeout")
            .args(["10", "virsh", "-c", SYSTEM_URI, "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if answered {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("libvirtd did not answer on {SYSTEM_URI} within 30 s")
}

/// Starts libvirtd again when dropped, unless it runs: a test that fails
/// while libvirtd is stopped must not leave the host without it.
#[derive(Debug)]
pub struct Restarter;

impl Drop for Restarter {
    fn drop(&mut self) {
        if libvirtd_pids().is_empty() {
            let _ = start();
        }
    }
}
