//! The host firewall of a NAT-filtered pool's bridge: what a guest may send
//! to the host itself.
//!
//! The pool's nwfilter (`paddock-egress`) sees a guest's packets before the
//! host routes them, and can name the gateway (`$GATEWAY`) but not "any
//! address of this host": a packet from the guest to another of the host's
//! addresses (another interface's, a veth's) is delivered locally, to
//! whatever listens on all addresses, on every port the filter lets out
//! (80, 443, 22, 9418). This firewall closes that: everything that comes in
//! on the pool's bridge and is delivered to the host is dropped, except
//! what a guest needs of its gateway (DHCP, DNS) and replies to
//! connections the host opened.
//!
//! The rules live in a chain of Paddock's own per bridge
//! (`PADDOCK_INP_<bridge>`, [`HostFirewall::chain`]) in the `mangle`
//! table, jumped to from its `INPUT` chain for packets in on the bridge
//! (`-i <bridge>`). libvirt's own chains are never touched, and the
//! `mangle` table's `INPUT` hook runs before the `filter` table's, where
//! libvirt keeps its accepts and re-inserts its jumps at the top whenever
//! it starts a network or a guest's interface (`LIBVIRT_INP` accepts DNS
//! and DHCP to every address of the host; nwfilter's `libvirt-host-in`
//! accepts what the egress filter lets out): a drop in `mangle` is final,
//! whatever `filter` would accept later, so the order of libvirt's rules
//! cannot undo it.
//!
//! IPv4 only: the guests' layer-2 filter (libvirt's `clean-traffic`, which
//! `paddock-egress` references) passes IPv4 and ARP frames only, so no
//! IPv6 packet of a guest reaches the host.
//!
//! Commands are `iptables` (on Debian 12 the nf_tables shim) run as child
//! processes; [`HostFirewall::apply`] and [`HostFirewall::remove`] run them
//! on tokio's blocking pool. Applying is idempotent (rules that are already
//! there are left alone, so a running pool's guests are never unguarded),
//! and [`crate::Paddock::create_pool`] applies on every creation, since the
//! rules do not survive a host reboot. `Pool::close` removes them.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use paddock_libvirt::NetworkSpec;

/// The prefix of each bridge's chain; the bridge's name follows.
pub const CHAIN_PREFIX: &str = "PADDOCK_INP_";

/// The table the chains and their jumps live in: its `INPUT` hook runs
/// before the `filter` table's.
pub const TABLE: &str = "mangle";

/// The built-in chain that jumps to each bridge's chain.
const HOOK_CHAIN: &str = "INPUT";

/// The longest interface name Linux takes (`IFNAMSIZ` less its NUL).
const BRIDGE_NAME_MAX: usize = 15;

/// How many copies of a jump [`HostFirewall::remove`] deletes at most (one
/// is all [`HostFirewall::apply`] makes).
const MAX_JUMPS: usize = 8;

/// Why the host firewall could not be applied or removed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The bridge's name cannot name a chain or an interface.
    #[error("Bridge name {0:?} is not a usable interface name")]
    BridgeName(String),
    /// No `iptables` on this host.
    #[error("iptables is not installed (no {program})")]
    Missing {
        /// The program looked for.
        program: PathBuf,
    },
    /// `iptables` could not be started.
    #[error("Cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },
    /// `iptables` exited with an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// The blocking task that ran `iptables` did not finish.
    #[error("The firewall task did not finish")]
    Task(#[source] tokio::task::JoinError),
}

/// The host firewall of one bridge: its rules (pure), and applying and
/// removing them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFirewall {
    bridge: String,
    gateway: Ipv4Addr,
}

/// What one `iptables` run gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The exit code (`None`: killed by a signal).
    code: Option<i32>,
    /// Standard output.
    stdout: String,
    /// Standard error, trimmed.
    stderr: String,
}

impl HostFirewall {
    /// The firewall of `network`'s bridge, which keeps DHCP and DNS to
    /// `network`'s gateway open.
    ///
    /// # Errors
    /// [`FirewallError::BridgeName`] when the bridge's name is empty,
    /// longer than 15 bytes, begins with `-`, or has other characters than
    /// ASCII letters, digits, `_`, `-` and `.`.
    pub fn new(network: &NetworkSpec) -> Result<Self, FirewallError> {
        let bridge = &network.bridge;
        let usable = !bridge.is_empty()
            && !bridge.starts_with('-')
            && bridge.len() <= BRIDGE_NAME_MAX
            && bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !usable {
            return Err(FirewallError::BridgeName(bridge.clone()));
        }
        Ok(Self {
            bridge: bridge.clone(),
            gateway: network.gateway(),
        })
    }

    /// The bridge.
    #[must_use]
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The bridge's chain: `PADDOCK_INP_<bridge>` (at most 27 bytes; a
    /// chain name may have 28).
    #[must_use]
    pub fn chain(&self) -> String {
        format!("{CHAIN_PREFIX}{}", self.bridge)
    }

    /// The match and target of the jump from `INPUT` to the chain.
    #[must_use]
    pub fn jump(&self) -> Vec<String> {
        strings(&["-i", &self.bridge, "-j", &self.chain()])
    }

    /// The chain's rules in order (match and target of each): replies to
    /// connections the host opened; DHCP requests broadcast or to the
    /// gateway; DNS over UDP and TCP to the gateway; then a drop of
    /// everything else.
    #[must_use]
    pub fn rules(&self) -> Vec<Vec<String>> {
        let gateway = self.gateway.to_string();
        let dhcp = |to: &str| {
            strings(&[
                "-d", to, "-p", "udp", "--sport", "68", "--dport", "67", "-j", "ACCEPT",
            ])
        };
        let dns = |protocol: &str| {
            strings(&[
                "-d", &gateway, "-p", protocol, "--dport", "53", "-j", "ACCEPT",
            ])
        };
        vec![
            strings(&[
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ]),
            dhcp("255.255.255.255"),
            dhcp(&gateway),
            dns("udp"),
            dns("tcp"),
            strings(&["-j", "DROP"]),
        ]
    }

    /// Makes the chain, its rules and the jump to it, leaving alone what is
    /// there already.
    ///
    /// # Errors
    /// `iptables` is missing or one of its commands fails.
    pub async fn apply(&self) -> Result<(), FirewallError> {
        let firewall = self.clone();
        tokio::task::spawn_blocking(move || firewall.apply_blocking())
            .await
            .map_err(FirewallError::Task)?
    }

    /// Removes the jump and the chain; nothing to remove is no error.
    ///
    /// # Errors
    /// `iptables` is missing or one of its commands fails.
    pub async fn remove(&self) -> Result<(), FirewallError> {
        let firewall = self.clone();
        tokio::task::spawn_blocking(move || firewall.remove_blocking())
            .await
            .map_err(FirewallError::Task)?
    }

    /// [`HostFirewall::apply`] on the calling thread (it blocks).
    ///
    /// # Errors
    /// As [`HostFirewall::apply`].
    pub fn apply_blocking(&self) -> Result<(), FirewallError> {
        self.apply_with(&mut run_iptables)
    }

    /// [`HostFirewall::remove`] on the calling thread (it blocks).
    ///
    /// # Errors
    /// As [`HostFirewall::remove`].
    pub fn remove_blocking(&self) -> Result<(), FirewallError> {
        self.remove_with(&mut run_iptables)
    }

    /// Applies through `run`, which runs one `iptables` command (its
    /// arguments) and returns how it ended.
    pub(crate) fn apply_with(
        &self,
        run: &mut impl FnMut(&[String]) -> Result<Outcome, FirewallError>,
    ) -> Result<(), FirewallError> {
        let chain = self.chain();
        let rules = self.rules();
        let listed = self.chain_listing(run)?;
        let up_to_date = match &listed {
            None => {
                change(run, &command(&["-N", &chain], &[]))?;
                false
            }
            // `-S CHAIN` prints the chain's `-N` line and one line a rule.
            Some(listing) if listing.lines().count() == rules.len() + 1 => {
                let mut all = true;
                for rule in &rules {
                    if !probe(run, &command(&["-C", &chain], rule))? {
                        all = false;
                        break;
                    }
                }
                all
            }
            Some(_) => false,
        };
        if !up_to_date {
            if listed.is_some() {
                change(run, &command(&["-F", &chain], &[]))?;
            }
            for rule in &rules {
                change(run, &command(&["-A", &chain], rule))?;
            }
        }
        let jump = self.jump();
        if !probe(run, &command(&["-C", HOOK_CHAIN], &jump))? {
            change(run, &command(&["-I", HOOK_CHAIN, "1"], &jump))?;
        }
        Ok(())
    }

    /// Removes through `run` (as [`HostFirewall::apply_with`]).
    pub(crate) fn remove_with(
        &self,
        run: &mut impl FnMut(&[String]) -> Result<Outcome, FirewallError>,
    ) -> Result<(), FirewallError> {
        let jump = self.jump();
        for _ in 0..MAX_JUMPS {
            if !probe(run, &command(&["-C", HOOK_CHAIN], &jump))? {
                break;
            }
            change(run, &command(&["-D", HOOK_CHAIN], &jump))?;
        }
        if self.chain_listing(run)?.is_some() {
            let chain = self.chain();
            change(run, &command(&["-F", &chain], &[]))?;
            change(run, &command(&["-X", &chain], &[]))?;
        }
        Ok(())
    }

    /// The chain's `-S` listing; `None` when it does not exist.
    fn chain_listing(
        &self,
        run: &mut impl FnMut(&[String]) -> Result<Outcome, FirewallError>,
    ) -> Result<Option<String>, FirewallError> {
        let args = command(&["-S", &self.chain()], &[]);
        let outcome = run(&args)?;
        match outcome.code {
            Some(0) => Ok(Some(outcome.stdout)),
            Some(1) => Ok(None),
            _ => Err(failed(&args, &outcome)),
        }
    }
}

/// The arguments of one command on [`TABLE`]: `-w` (wait for the lock a
/// legacy iptables takes) and the table, then `operation` and `rule`.
fn command(operation: &[&str], rule: &[String]) -> Vec<String> {
    let mut args = strings(&["-w", "-t", TABLE]);
    args.extend(strings(operation));
    args.extend_from_slice(rule);
    args
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|&item| item.to_owned()).collect()
}

/// A check (`-C`): exit 0 is yes, exit 1 no (no such rule or chain),
/// anything else an error.
fn probe(
    run: &mut impl FnMut(&[String]) -> Result<Outcome, FirewallError>,
    args: &[String],
) -> Result<bool, FirewallError> {
    let outcome = run(args)?;
    match outcome.code {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failed(args, &outcome)),
    }
}

/// A change: it must exit 0.
fn change(
    run: &mut impl FnMut(&[String]) -> Result<Outcome, FirewallError>,
    args: &[String],
) -> Result<(), FirewallError> {
    let outcome = run(args)?;
    if outcome.code == Some(0) {
        Ok(())
    } else {
        Err(failed(args, &outcome))
    }
}

fn command_line(args: &[String]) -> String {
    std::iter::once("iptables")
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

fn failed(args: &[String], outcome: &Outcome) -> FirewallError {
    FirewallError::Failed {
        command: command_line(args),
        status: outcome.code.map_or_else(
            || "killed by a signal".to_owned(),
            |code| format!("exit {code}"),
        ),
        stderr: outcome.stderr.clone(),
    }
}

/// The `iptables` program: the one on `PATH`, else in `/usr/sbin` or
/// `/sbin` (a daemon's `PATH` may lack the sbin directories).
fn program() -> Result<PathBuf, FirewallError> {
    let on_path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&on_path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("iptables"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| FirewallError::Missing {
            program: "iptables".into(),
        })
}

/// Runs `iptables` with `args`.
fn run_iptables(args: &[String]) -> Result<Outcome, FirewallError> {
    let program = program()?;
    let output = Command::new(&program)
        .args(args)
        .output()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => FirewallError::Missing {
                program: program.clone(),
            },
            _ => FirewallError::Spawn {
                command: command_line(args),
                source,
            },
        })?;
    Ok(Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use paddock_libvirt::NetworkKind;

    use super::*;

    fn network(bridge: &str) -> NetworkSpec {
        NetworkSpec {
            name: "pn".into(),
            bridge: bridge.into(),
            kind: NetworkKind::Nat,
            subnet: Ipv4Addr::new(10, 9, 8, 0),
            slots: 4,
        }
    }

    fn firewall() -> HostFirewall {
        HostFirewall::new(&network("pdkbr0")).expect("a usable bridge name")
    }

    fn ok(stdout: &str) -> Outcome {
        Outcome {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    fn absent() -> Outcome {
        Outcome {
            code: Some(1),
            stdout: String::new(),
            stderr: "iptables: No chain/target/match by that name.".into(),
        }
    }

    fn joined(args: &[String]) -> String {
        args.join(" ")
    }

    /// A fake `iptables` over one chain and its jump: answers `-S`, `-C`,
    /// `-N`, `-F`, `-X`, `-A`, `-I`, `-D` as iptables would, and records
    /// every command.
    #[derive(Default)]
    struct FakeIptables {
        chain: Option<Vec<String>>,
        jumps: usize,
        calls: Vec<String>,
        fail_on: Option<&'static str>,
    }

    impl FakeIptables {
        fn run(&mut self, args: &[String]) -> Result<Outcome, FirewallError> {
            let line = joined(args);
            self.calls.push(line.clone());
            assert_eq!(&args[..3], ["-w", "-t", "mangle"], "{line}");
            if self.fail_on.is_some_and(|op| args[3] == op) {
                return Ok(Outcome {
                    code: Some(4),
                    stdout: String::new(),
                    stderr: "Permission denied".into(),
                });
            }
            let rest = joined(&args[5..]);
            let on_hook = args[4] == "INPUT";
            Ok(match (args[3].as_str(), on_hook) {
                ("-S", false) => match &self.chain {
                    Some(rules) => ok(&format!("-N {}\n{}", args[4], rules.join("\n"))),
                    None => absent(),
                },
                ("-N", false) => {
                    self.chain = Some(Vec::new());
                    ok("")
                }
                ("-F", false) => {
                    self.chain = Some(Vec::new());
                    ok("")
                }
                ("-X", false) => {
                    self.chain = None;
                    ok("")
                }
                ("-A", false) => {
                    self.chain.as_mut().expect("chain made first").push(rest);
                    ok("")
                }
                ("-C", false) => {
                    if self
                        .chain
                        .as_ref()
                        .is_some_and(|rules| rules.contains(&rest))
                    {
                        ok("")
                    } else {
                        absent()
                    }
                }
                ("-C", true) => {
                    if self.jumps > 0 {
                        ok("")
                    } else {
                        absent()
                    }
                }
                ("-I", true) => {
                    assert_eq!(args[5], "1", "the jump goes first: {line}");
                    self.jumps += 1;
                    ok("")
                }
                ("-D", true) => {
                    self.jumps -= 1;
                    ok("")
                }
                _ => panic!("unexpected command {line}"),
            })
        }
    }

    #[test]
    fn the_rules_open_dhcp_and_dns_to_the_gateway_and_drop_the_rest() {
        let firewall = firewall();
        assert_eq!(firewall.chain(), "PADDOCK_INP_pdkbr0");
        assert_eq!(joined(&firewall.jump()), "-i pdkbr0 -j PADDOCK_INP_pdkbr0");
        let rules: Vec<String> = firewall.rules().iter().map(|rule| joined(rule)).collect();
        assert_eq!(
            rules,
            [
                "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-d 255.255.255.255 -p udp --sport 68 --dport 67 -j ACCEPT",
                "-d 10.9.8.1 -p udp --sport 68 --dport 67 -j ACCEPT",
                "-d 10.9.8.1 -p udp --dport 53 -j ACCEPT",
                "-d 10.9.8.1 -p tcp --dport 53 -j ACCEPT",
                "-j DROP",
            ]
        );
    }

    #[test]
    fn chain_names_fit_and_odd_bridge_names_are_refused() {
        let longest = HostFirewall::new(&network("abcdefghijklmno")).expect("15 bytes");
        assert!(longest.chain().len() <= 28, "{}", longest.chain());
        for bad in ["", "abcdefghijklmnop", "br 0", "br!0", "-j", "br/0"] {
            let result = HostFirewall::new(&network(bad));
            assert!(
                matches!(result, Err(FirewallError::BridgeName(ref name)) if name == bad),
                "{bad:?}: {result:?}"
            );
        }
    }

    #[test]
    fn applying_makes_the_chain_then_the_jump_first_in_input() {
        let firewall = firewall();
        let mut fake = FakeIptables::default();
        firewall
            .apply_with(&mut |args: &[String]| fake.run(args))
            .expect("applied");
        let mut expected = vec![
            "-w -t mangle -S PADDOCK_INP_pdkbr0".to_owned(),
            "-w -t mangle -N PADDOCK_INP_pdkbr0".to_owned(),
        ];
        expected.extend(
            firewall
                .rules()
                .iter()
                .map(|rule| format!("-w -t mangle -A PADDOCK_INP_pdkbr0 {}", joined(rule))),
        );
        expected.push("-w -t mangle -C INPUT -i pdkbr0 -j PADDOCK_INP_pdkbr0".into());
        expected.push("-w -t mangle -I INPUT 1 -i pdkbr0 -j PADDOCK_INP_pdkbr0".into());
        assert_eq!(fake.calls, expected);
        assert_eq!(fake.jumps, 1);
    }

    #[test]
    fn applying_again_changes_nothing() {
        let firewall = firewall();
        let mut fake = FakeIptables::default();
        firewall
            .apply_with(&mut |args: &[String]| fake.run(args))
            .expect("applied");
        fake.calls.clear();
        firewall
            .apply_with(&mut |args: &[String]| fake.run(args))
            .expect("applied again");
        assert!(
            fake.calls
                .iter()
                .all(|call| call.contains(" -S ") || call.contains(" -C ")),
            "only checks: {:?}",
            fake.calls
        );
        assert_eq!(fake.jumps, 1);
        assert_eq!(
            fake.chain.as_ref().map(Vec::len),
            Some(firewall.rules().len())
        );
    }

    #[test]
    fn a_chain_that_differs_is_flushed_and_refilled() {
        let firewall = firewall();
        let mut fake = FakeIptables {
            chain: Some(vec!["-j ACCEPT".into()]),
            jumps: 1,
            ..FakeIptables::default()
        };
        firewall
            .apply_with(&mut |args: &[String]| fake.run(args))
            .expect("applied");
        let rules: Vec<String> = firewall.rules().iter().map(|rule| joined(rule)).collect();
        assert_eq!(fake.chain, Some(rules));
        assert!(
            fake.calls
                .contains(&"-w -t mangle -F PADDOCK_INP_pdkbr0".to_owned())
        );
        assert_eq!(fake.jumps, 1, "the jump there is kept, not doubled");
    }

    #[test]
    fn removing_deletes_every_jump_and_the_chain_and_is_idempotent() {
        let firewall = firewall();
        let mut fake = FakeIptables::default();
        firewall
            .apply_with(&mut |args: &[String]| fake.run(args))
            .expect("applied");
        fake.jumps = 2;
        firewall
            .remove_with(&mut |args: &[String]| fake.run(args))
            .expect("removed");
        assert_eq!((fake.jumps, fake.chain.is_none()), (0, true));
        fake.calls.clear();
        firewall
            .remove_with(&mut |args: &[String]| fake.run(args))
            .expect("nothing to remove");
        assert_eq!(
            fake.calls,
            [
                "-w -t mangle -C INPUT -i pdkbr0 -j PADDOCK_INP_pdkbr0",
                "-w -t mangle -S PADDOCK_INP_pdkbr0",
            ]
        );
    }

    #[test]
    fn a_failing_command_is_named_with_its_stderr() {
        let firewall = firewall();
        let mut fake = FakeIptables {
            fail_on: Some("-N"),
            ..FakeIptables::default()
        };
        let err = firewall
            .apply_with(&mut |args: &[String]| fake.run(args))
            .expect_err("-N fails");
        assert_eq!(
            err.to_string(),
            "`iptables -w -t mangle -N PADDOCK_INP_pdkbr0` failed (exit 4): Permission denied"
        );
        let mut fake = FakeIptables {
            fail_on: Some("-C"),
            ..FakeIptables::default()
        };
        assert!(matches!(
            firewall.remove_with(&mut |args: &[String]| fake.run(args)),
            Err(FirewallError::Failed { .. })
        ));
    }
}
