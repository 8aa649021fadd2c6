//! Where a sandbox's boot time goes: [`BootPhases`], consecutive named
//! durations from the host's domain start call to the agent's HELLO_ACK.
//!
//! Three sources are joined:
//!
//! - the host's clock around libvirt's start call and the agent's answer;
//! - the guest's own uptime at each step of its boot, which `/init`, `rcS`
//!   and `agent-run` (`guest-agent/image/rootfs/`) measure with
//!   `/proc/uptime` and `agent-run` prints as one console line,
//!   `paddock: boot phases: init=2.70 rcs=2.75 ...` ([`GuestMarks`]);
//! - one STATUS request right after the HELLO_ACK, whose guest uptime and
//!   agent uptime place the guest's clock on the host's timeline.
//!
//! The guest's uptime counts from the kernel's clock start, so the time
//! from the start call's return to the guest's zero (QEMU resuming the
//! vCPU, the firmware, loading and decompressing the kernel, the kernel's
//! earliest set-up) is what is left: `firmware` is the total minus
//! everything measured. Until the kernel switches to the TSC clocksource
//! its clock advances by timer ticks, and ticks an emulated CPU on a busy
//! host delivers late are lost: the guest's uptime then undercounts the
//! kernel's first phase, and `firmware` holds the difference (how much
//! was not measured here: the host was never idle).

use std::path::Path;
use std::time::Duration;

/// The console line's prefix (printed by `agent-run`).
pub const CONSOLE_PREFIX: &str = "paddock: boot phases:";

/// The guest's uptime at each step of its boot, in seconds, as the console
/// line gives it. A step the image does not mark is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GuestMarks {
    /// `/init` started (the kernel's `Run /init`).
    pub init: Option<f64>,
    /// busybox init started `rcS`.
    pub rcs: Option<f64>,
    /// `rcS` mounted the file systems.
    pub mounts: Option<f64>,
    /// `rcS` loaded the kernel modules.
    pub modules: Option<f64>,
    /// `rcS` ended (loopback up, DHCP started in the background).
    pub rcs_end: Option<f64>,
    /// busybox init started `agent-run`.
    pub agent_run: Option<f64>,
    /// `agent-run` found the agent's virtio-serial port.
    pub port: Option<f64>,
    /// `agent-run` started the agent.
    pub agent: Option<f64>,
}

impl GuestMarks {
    /// The marks of the last boot-phases line of a console log (an agent
    /// that `agent-run` restarted prints one per start), or `None` when it
    /// has none. Words it does not know are ignored, and so are values that
    /// are not a finite, non-negative number.
    #[must_use]
    pub fn parse_console(console: &str) -> Option<Self> {
        let line = console
            .lines()
            .rev()
            .find_map(|line| line.trim_end_matches('\r').strip_prefix(CONSOLE_PREFIX))?;
        let mut marks = Self::default();
        for word in line.split_whitespace() {
            let Some((name, value)) = word.split_once('=') else {
                continue;
            };
            let Some(seconds) = value
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
            else {
                continue;
            };
            let slot = match name {
                "init" => &mut marks.init,
                "rcs" => &mut marks.rcs,
                "mounts" => &mut marks.mounts,
                "modules" => &mut marks.modules,
                "rcs_end" => &mut marks.rcs_end,
                "agent_run" => &mut marks.agent_run,
                "port" => &mut marks.port,
                "agent" => &mut marks.agent,
                _ => continue,
            };
            *slot = Some(seconds);
        }
        Some(marks)
    }

    /// Reads the console log at `path` (its last 64 KiB) and parses it.
    #[must_use]
    pub fn read_console(path: &Path) -> Option<Self> {
        Self::parse_console(&super::guest::console_tail(path, usize::MAX))
    }

    /// The marks in boot order, with their names.
    fn in_order(&self) -> [(&'static str, Option<f64>); 8] {
        [
            ("init", self.init),
            ("rcs", self.rcs),
            ("mounts", self.mounts),
            ("modules", self.modules),
            ("rcs_end", self.rcs_end),
            ("agent_run", self.agent_run),
            ("port", self.port),
            ("agent", self.agent),
        ]
    }
}

/// What the host measured around a boot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostTimes {
    /// libvirt's domain start call (QEMU started, guest running).
    pub start_call: Duration,
    /// From the start call to the agent's HELLO_ACK: the boot's total.
    pub ready: Duration,
    /// The guest's uptime at the HELLO_ACK, from a STATUS right after it
    /// (corrected by the host time that passed until its reply, less half
    /// its round trip); `None` when it could not be asked.
    pub guest_uptime_at_ready: Option<Duration>,
    /// The agent's own uptime at the HELLO_ACK, from the same STATUS.
    pub agent_uptime_at_ready: Option<Duration>,
}

/// Consecutive named durations that make up a boot, from the host's start
/// call to the agent's HELLO_ACK (see the module docs). Phases that could
/// not be measured (an image without the marks, no STATUS answer) are left
/// out; `firmware` is then not known either.
#[derive(Debug, Clone, PartialEq)]
pub struct BootPhases {
    total: Duration,
    phases: Vec<(&'static str, Duration)>,
}

impl BootPhases {
    /// Joins the host's times and the guest's marks.
    ///
    /// The phases, in order: `start_call` (libvirt starts QEMU), `firmware`
    /// (the rest until the guest's clock starts: firmware, kernel loading
    /// and decompression), `kernel` (to `/init`), `init` (`/init` and
    /// busybox init until `rcS`), `mounts`, `modules`, `rcs_rest`,
    /// `respawn` (busybox init until `agent-run`), `port_wait`,
    /// `agent_launch` (until `agent-run` starts the agent), `agent_exec`
    /// (until the agent process runs), `agent_hello` (until its
    /// HELLO_ACK).
    #[must_use]
    pub fn new(host: HostTimes, marks: Option<GuestMarks>) -> Self {
        let mut phases = vec![("start_call", host.start_call)];
        if let (Some(uptime), Some(marks)) = (host.guest_uptime_at_ready, marks) {
            let guest_zero = host
                .ready
                .saturating_sub(host.start_call)
                .saturating_sub(uptime);
            phases.push(("firmware", guest_zero));
            let mut previous = ("boot", 0.0_f64);
            let names = [
                "kernel",
                "init",
                "mounts",
                "modules",
                "rcs_rest",
                "respawn",
                "port_wait",
                "agent_launch",
            ];
            for ((_, mark), name) in marks.in_order().into_iter().zip(names) {
                if let Some(at) = mark {
                    phases.push((name, seconds_between(previous.1, at)));
                    previous = (name, at);
                }
            }
            let agent_started = host
                .agent_uptime_at_ready
                .map(|agent| uptime.saturating_sub(agent).as_secs_f64());
            if let Some(started) = agent_started.filter(|&s| s >= previous.1) {
                phases.push(("agent_exec", seconds_between(previous.1, started)));
                previous.1 = started;
            }
            phases.push((
                "agent_hello",
                uptime.saturating_sub(Duration::from_secs_f64(previous.1)),
            ));
        }
        Self {
            total: host.ready,
            phases,
        }
    }

    /// From the start call to the HELLO_ACK ([`super::Sandbox::boot_to_ready`]).
    #[must_use]
    pub fn total(&self) -> Duration {
        self.total
    }

    /// The phases in boot order, with their names (see [`BootPhases::new`]).
    #[must_use]
    pub fn phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
    }

    /// One phase by name.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<Duration> {
        self.phases
            .iter()
            .find_map(|(phase, duration)| (*phase == name).then_some(*duration))
    }

    /// The sum of the phases: at most [`BootPhases::total`] give or take the
    /// clocks' rounding (milliseconds), equal to it when the guest's marks
    /// were all known.
    #[must_use]
    pub fn sum(&self) -> Duration {
        self.phases.iter().map(|(_, duration)| *duration).sum()
    }
}

/// `to - from` seconds as a duration, zero when `to` is earlier (marks are
/// rounded to 10 ms by `/proc/uptime`).
fn seconds_between(from: f64, to: f64) -> Duration {
    Duration::try_from_secs_f64(to - from).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "paddock: boot phases: init=2.70 rcs=2.81 mounts=2.90 modules=3.40 \
                        rcs_end=3.45 agent_run=3.50 port=3.52 agent=3.53";

    #[test]
    fn the_last_line_wins_and_unknown_words_are_ignored() {
        let console = format!(
            "booting\npaddock: boot phases: init=1.00\n{LINE} future=9 bad=x neg=-1\r\nafter\n"
        );
        let marks = GuestMarks::parse_console(&console);
        assert_eq!(
            marks,
            Some(GuestMarks {
                init: Some(2.70),
                rcs: Some(2.81),
                mounts: Some(2.90),
                modules: Some(3.40),
                rcs_end: Some(3.45),
                agent_run: Some(3.50),
                port: Some(3.52),
                agent: Some(3.53),
            })
        );
        assert_eq!(GuestMarks::parse_console("no marks here\n"), None);
        let partial = GuestMarks::parse_console("paddock: boot phases: rcs=NaN init=inf mounts=1")
            .unwrap_or_default();
        assert_eq!((partial.init, partial.rcs), (None, None));
        assert_eq!(partial.mounts, Some(1.0));
    }

    #[test]
    fn phases_are_consecutive_and_add_up_to_the_total() {
        let host = HostTimes {
            start_call: Duration::from_millis(400),
            ready: Duration::from_millis(5000),
            guest_uptime_at_ready: Some(Duration::from_millis(3600)),
            agent_uptime_at_ready: Some(Duration::from_millis(50)),
        };
        let phases = BootPhases::new(host, GuestMarks::parse_console(LINE));
        let names: Vec<&str> = phases.phases().iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
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
                "agent_hello"
            ]
        );
        assert_eq!(phases.get("firmware"), Some(Duration::from_millis(1000)));
        assert_eq!(phases.get("kernel"), Some(Duration::from_millis(2700)));
        assert_eq!(phases.get("modules"), Some(Duration::from_millis(500)));
        // The agent ran 50 ms before the HELLO_ACK at 3.60: from 3.55.
        assert_eq!(phases.get("agent_exec"), Some(Duration::from_millis(20)));
        assert_eq!(phases.get("agent_hello"), Some(Duration::from_millis(50)));
        let gap = phases.sum().abs_diff(phases.total());
        assert!(gap < Duration::from_millis(2), "{phases:?}");
    }

    #[test]
    fn without_guest_figures_only_the_host_phase_is_known() {
        let host = HostTimes {
            start_call: Duration::from_millis(400),
            ready: Duration::from_millis(5000),
            guest_uptime_at_ready: None,
            agent_uptime_at_ready: None,
        };
        let phases = BootPhases::new(host, GuestMarks::parse_console(LINE));
        assert_eq!(
            phases.phases(),
            [("start_call", Duration::from_millis(400))]
        );
        assert_eq!(phases.get("firmware"), None);
        assert!(phases.sum() <= phases.total());
    }
}
