//! The daemon's configuration file (TOML): the server's listeners and
//! files, the tenants and their tokens, and the pools. Unknown keys are
//! errors, and every error names the file, the line and the field. Pool
//! names follow the library's rule ([`paddock::names`]: 1 to 20 of `a-z`,
//! `0-9`, `-` and `_`, starting with a letter or digit); a file with
//! another is refused at load, naming the rule it broke. A pool's
//! `shared_folders` key is refused by name too: shared folders are for the
//! library's single sandboxes (QEMU cannot snapshot a guest with one, and a
//! pool's slots are snapshots), and the daemon serves pools only.
//!
//! ```toml
//! [server]
//! image = "/var/lib/paddock/images/current/manifest.json"
//! socket = "/run/paddock/paddock.sock"    # the operator's listener (default)
//! tcp = "127.0.0.1:8470"                  # tenants' listener (optional)
//! audit_dir = "/var/log/paddock/audit"    # optional
//!
//! [[tenant]]
//! name = "acme"
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! requests_per_second = 50
//!
//! [[pool]]
//! name = "py"
//! min_ready = 2
//! max_size = 4
//! reset = "in_place"
//! warmup = ["echo warm > /tmp/warm"]
//! policy = "policies/python-interpreter.toml"  # relative to this file
//! [pool.limits]
//! lease_execs_per_second = 20
//! [pool.resources]                      # limits on each slot's QEMU (optional)
//! cpu_percent = 50                        # of one host CPU; default 100 per vCPU
//! memory_hard_limit_mib = 700             # default: memory + cache + overhead
//! ```

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paddock::libvirt::{CpuQuota, Profile, Resources};
use paddock::{PoolConfig, RateLimit, RateLimits, ResetStrategy, VmPoolSpec};
use serde::Deserialize;

/// Where the operator's socket is by default.
pub const DEFAULT_SOCKET: &str = "/run/paddock/paddock.sock";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("Could not read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a field is unknown, missing or of the
    /// wrong type. The message names the line, column and field.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message: line, column, the line itself, and the field.
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("{}, line {line}: {field}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line of the table at fault.
        line: usize,
        /// The field, as `pool.py.min_ready`.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    server: ServerConfig,
    #[serde(default, rename = "tenant")]
    tenants: Vec<toml::Spanned<TenantConfig>>,
    #[serde(default, rename = "pool")]
    pools: Vec<toml::Spanned<PoolFile>>,
}

/// `[server]`: listeners, files, the libvirt connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The guest image manifest every pool boots.
    pub image: PathBuf,
    /// The operator's Unix socket (mode 0600).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// The tenants' TCP listener, if any.
    #[serde(default)]
    pub tcp: Option<SocketAddr>,
    /// The libvirt URI.
    #[serde(default = "default_libvirt_uri")]
    pub libvirt_uri: String,
    /// Where pools keep their files; the library's default if absent. It
    /// is made (or kept) root's and QEMU's group's, mode 2750.
    #[serde(default)]
    pub state_root: Option<PathBuf>,
    /// Where the audit log is written; no audit log if absent.
    #[serde(default)]
    pub audit_dir: Option<PathBuf>,
    /// The largest JSON request body.
    #[serde(default = "default_max_json_bytes")]
    pub max_json_bytes: usize,
    /// How long a drain (SIGTERM) lets running executions go on before it
    /// ends their leases.
    #[serde(default = "default_drain_grace_s")]
    pub drain_grace_s: u64,
    /// How long a client may take to send a request's headers.
    #[serde(default = "default_header_timeout_s")]
    pub header_timeout_s: u64,
}

fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}

fn default_libvirt_uri() -> String {
    "qemu:///system".into()
}

const fn default_max_json_bytes() -> usize {
    1 << 20
}

const fn default_drain_grace_s() -> u64 {
    30
}

const fn default_header_timeout_s() -> u64 {
    10
}

/// `[[tenant]]`: a name, the SHA-256 of its bearer token, its rights and
/// its request rate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's name: the actor of its audit records, the key of its
    /// per-tenant limits.
    pub name: String,
    /// The SHA-256 of its token, 64 hex digits (`sha256sum` of the token,
    /// without a newline). The token itself is never stored.
    pub token_sha256: String,
    /// Whether it may call the operator endpoints.
    #[serde(default)]
    pub admin: bool,
    /// API requests per second (burst as many); unlimited if absent.
    #[serde(default)]
    pub requests_per_second: Option<u32>,
}

/// `[[pool]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    name: String,
    #[serde(default = "default_memory_mib")]
    memory_mib: u64,
    #[serde(default = "default_vcpus")]
    vcpus: u32,
    #[serde(default)]
    warmup: Vec<String>,
    #[serde(default)]
    rewarm: Option<Vec<String>>,
    #[serde(default)]
    reset: ResetName,
    #[serde(default = "default_min_ready")]
    min_ready: usize,
    #[serde(default = "default_max_size")]
    max_size: usize,
    #[serde(default)]
    ttl_s: Option<u64>,
    #[serde(default)]
    max_uses: Option<u32>,
    #[serde(default)]
    acquire_timeout_ms: Option<u64>,
    #[serde(default)]
    exec_timeout_ms: Option<u64>,
    #[serde(default)]
    boot_timeout_s: Option<u64>,
    #[serde(default)]
    limits: LimitsFile,
    /// A request policy file (`policies/README.md`), relative to this
    /// file's directory unless absolute.
    #[serde(default)]
    policy: Option<PathBuf>,
    #[serde(default)]
    resources: ResourcesFile,
    /// Read only to be refused by name: a pool's slots are snapshots, and
    /// QEMU cannot snapshot a guest with a shared folder (the library's
    /// `VmError::SharesInPool`). Shared folders are for single sandboxes,
    /// which the daemon does not serve.
    #[serde(default)]
    shared_folders: Option<toml::Value>,
}

const fn default_memory_mib() -> u64 {
    256
}

const fn default_vcpus() -> u32 {
    1
}

const fn default_min_ready() -> usize {
    1
}

const fn default_max_size() -> usize {
    2
}

/// `reset = "in_place" | "restore" | "revert"`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ResetName {
    #[default]
    InPlace,
    Restore,
    Revert,
}

/// `[pool.limits]`: every rate is optional.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    acquires_per_second: Option<u32>,
    tenant_acquires_per_second: Option<u32>,
    lease_execs_per_second: Option<u32>,
    lease_file_kib_per_second: Option<u32>,
    lease_received_kib_per_second: Option<u32>,
    tenant_throttle_s: Option<u64>,
}

/// `[pool.resources]`: the limits on each slot's QEMU. Every one is
/// optional; an absent one keeps the default derived from `vcpus` and
/// `memory_mib` (`paddock::libvirt::Profile::tuning`).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesFile {
    /// Host CPU time the whole QEMU may use, in per cent of one CPU
    /// (default 100 per vCPU).
    cpu_percent: Option<u32>,
    /// Relative CPU weight against other domains (default 1024 per vCPU).
    cpu_shares: Option<u32>,
    /// Memory hard limit of the QEMU process, guest RAM included.
    memory_hard_limit_mib: Option<u64>,
    /// Most threads QEMU may have.
    pids_max: Option<u32>,
    /// TCG translation cache.
    tcg_tb_cache_mib: Option<u64>,
}

/// The fewest threads a QEMU is let have besides one per vCPU: an idle one
/// has 3 of its own here, up to 7 under disk I/O and snapshots.
const MIN_QEMU_THREADS: u32 = 16;

impl ResourcesFile {
    /// The pool's limits: the defaults for `vcpus` and `memory_mib` with
    /// the file's values in their place.
    fn to_tuning(
        self,
        vcpus: u32,
        memory_mib: u64,
    ) -> Result<paddock::libvirt::Tuning, (&'static str, String)> {
        let mut tuning = Profile::Custom(Resources { vcpus, memory_mib }).tuning();
        if let Some(percent) = self.cpu_percent {
            if !(1..=100_000).contains(&percent) {
                return Err(("resources.cpu_percent", "must be 1 to 100000".into()));
            }
            tuning.cpu_quota = Some(CpuQuota::percent_of_one_cpu(percent));
        }
        if let Some(shares) = self.cpu_shares {
            if !(2..=262_144).contains(&shares) {
                return Err(("resources.cpu_shares", "must be 2 to 262144".into()));
            }
            tuning.cpu_shares = Some(shares);
        }
        if let Some(mib) = self.tcg_tb_cache_mib {
            if !(16..=4096).contains(&mib) {
                return Err(("resources.tcg_tb_cache_mib", "must be 16 to 4096".into()));
            }
            tuning.tcg_tb_cache_mib = Some(mib);
            if self.memory_hard_limit_mib.is_none() {
                // The default limit makes room for the default cache.
                tuning.memory_hard_limit_mib = tuning.memory_hard_limit_mib.map(|limit| {
                    limit
                        .saturating_sub(paddock::libvirt::TCG_TB_CACHE_MIB)
                        .saturating_add(mib)
                });
            }
        }
        if let Some(mib) = self.memory_hard_limit_mib {
            let floor = memory_mib.saturating_add(tuning.tcg_tb_cache_mib.unwrap_or(0));
            if mib <= floor {
                return Err((
                    "resources.memory_hard_limit_mib",
                    format!(
                        "must be above {floor}: the guest's memory and QEMU's translation \
                         cache, or QEMU is killed when the guest uses them"
                    ),
                ));
            }
            tuning.memory_hard_limit_mib = Some(mib);
        }
        if let Some(max) = self.pids_max {
            let floor = MIN_QEMU_THREADS.saturating_add(vcpus);
            if max < floor {
                return Err((
                    "resources.pids_max",
                    format!("must be at least {floor}: QEMU's own threads and one per vCPU"),
                ));
            }
            tuning.pids_max = Some(max);
        }
        Ok(tuning)
    }
}

/// One pool: what the library needs to make it.
#[derive(Debug, Clone)]
pub struct PoolDeclaration {
    /// The VMs.
    pub spec: VmPoolSpec,
    /// The pool's sizes, timeouts and limits (its `events` are set by the
    /// daemon).
    pub config: PoolConfig,
}

/// A parsed and checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// `[server]`.
    pub server: ServerConfig,
    /// The tenants, by declaration order.
    pub tenants: Vec<TenantConfig>,
    /// The pools, by declaration order.
    pub pools: Vec<PoolDeclaration>,
}

impl Config {
    /// Reads and checks `path`.
    ///
    /// # Errors
    /// [`ConfigError`], naming the line and field at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Checks `text`, the contents of `path`.
    ///
    /// # Errors
    /// [`ConfigError`], naming the line and field at fault.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file: File = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })?;
        let invalid =
            |span: std::ops::Range<usize>, field: String, problem: String| ConfigError::Invalid {
                path: path.to_owned(),
                line: line_of(text, span.start),
                field,
                problem,
            };
        let mut tenants: Vec<TenantConfig> = Vec::new();
        for tenant in &file.tenants {
            let span = tenant.span();
            let tenant = tenant.get_ref();
            let field = |name: &str| format!("tenant.{}.{name}", tenant.name);
            if tenant.name.is_empty() || tenants.iter().any(|t| t.name == tenant.name) {
                return Err(invalid(
                    span,
                    field("name"),
                    "empty, or the name of another tenant".into(),
                ));
            }
            if tenant.name == crate::auth::OPERATOR {
                return Err(invalid(
                    span,
                    field("name"),
                    format!("`{}` is the Unix socket's operator", crate::auth::OPERATOR),
                ));
            }
            if crate::auth::parse_digest(&tenant.token_sha256).is_none() {
                return Err(invalid(
                    span,
                    field("token_sha256"),
                    "not 64 hexadecimal digits (the SHA-256 of the token)".into(),
                ));
            }
            if tenant.requests_per_second == Some(0) {
                return Err(invalid(
                    span,
                    field("requests_per_second"),
                    "must be at least 1".into(),
                ));
            }
            tenants.push(tenant.clone());
        }
        let mut pools: Vec<PoolDeclaration> = Vec::new();
        for pool in &file.pools {
            let span = pool.span();
            let declared = pool.get_ref();
            let field = |name: &str| format!("pool.{}.{name}", declared.name);
            // The library's rule: pool names become paths, domain names
            // and XML.
            if let Err(err) = paddock::names::check_pool_name(&declared.name) {
                return Err(invalid(span, field("name"), err.to_string()));
            }
            if pools.iter().any(|p| p.spec.name == declared.name) {
                return Err(invalid(
                    span,
                    field("name"),
                    "the name of another pool".into(),
                ));
            }
            let mut declaration = declared
                .to_declaration()
                .map_err(|(name, problem)| invalid(span.clone(), field(name), problem))?;
            if let Some(policy) = &declared.policy {
                let resolved = path.parent().unwrap_or(Path::new(".")).join(policy);
                let policy = paddock::policy::Policy::load(&resolved).map_err(|err| {
                    invalid(span.clone(), field("policy"), crate::error::chain(&err))
                })?;
                declaration.config.policy = Some(std::sync::Arc::new(policy));
            }
            declaration
                .config
                .validate()
                .map_err(|err| invalid(span, field("min_ready"), err.to_string()))?;
            pools.push(declaration);
        }
        Ok(Self {
            path: path.to_owned(),
            server: file.server,
            tenants,
            pools,
        })
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

fn rate(
    value: Option<u32>,
    name: &'static str,
) -> Result<Option<RateLimit>, (&'static str, String)> {
    match value {
        None => Ok(None),
        Some(n) => NonZeroU32::new(n)
            .map(|n| Some(RateLimit::per_second(n)))
            .ok_or((name, "must be at least 1".into())),
    }
}

impl PoolFile {
    fn to_declaration(&self) -> Result<PoolDeclaration, (&'static str, String)> {
        if self.memory_mib < 64 {
            return Err(("memory_mib", "must be at least 64".into()));
        }
        if self.vcpus == 0 {
            return Err(("vcpus", "must be at least 1".into()));
        }
        if self.shared_folders.is_some() {
            return Err((
                "shared_folders",
                "pools cannot have shared folders (their slots are snapshots, and QEMU cannot \
                 snapshot a guest with one); only single sandboxes of the library can"
                    .into(),
            ));
        }
        let mut spec = VmPoolSpec::new(&self.name);
        spec.memory_mib = self.memory_mib;
        spec.vcpus = self.vcpus;
        spec.tuning = Some(self.resources.to_tuning(self.vcpus, self.memory_mib)?);
        spec.warmup.clone_from(&self.warmup);
        if let Some(rewarm) = &self.rewarm {
            spec.rewarm.clone_from(rewarm);
        }
        spec.reset = match self.reset {
            ResetName::InPlace => ResetStrategy::InPlace,
            ResetName::Restore => ResetStrategy::Restore,
            ResetName::Revert => ResetStrategy::Revert,
        };
        if let Some(secs) = self.boot_timeout_s {
            spec.boot_timeout = Duration::from_secs(secs);
        }
        if let Some(ms) = self.exec_timeout_ms {
            spec.client.default_exec_timeout = Duration::from_millis(ms);
        }
        let limits = &self.limits;
        let mut rate_limits = RateLimits {
            acquires: rate(limits.acquires_per_second, "limits.acquires_per_second")?,
            tenant_acquires: rate(
                limits.tenant_acquires_per_second,
                "limits.tenant_acquires_per_second",
            )?,
            lease_execs: rate(
                limits.lease_execs_per_second,
                "limits.lease_execs_per_second",
            )?,
            lease_file_bytes: rate(
                limits.lease_file_kib_per_second,
                "limits.lease_file_kib_per_second",
            )?,
            lease_received_bytes: rate(
                limits.lease_received_kib_per_second,
                "limits.lease_received_kib_per_second",
            )?,
            ..RateLimits::default()
        };
        if let Some(secs) = limits.tenant_throttle_s {
            rate_limits.tenant_throttle = Duration::from_secs(secs);
        }
        let mut config = PoolConfig {
            min_ready: self.min_ready,
            max_size: self.max_size,
            ttl: self.ttl_s.map(Duration::from_secs),
            max_uses: self.max_uses,
            limits: rate_limits,
            ..PoolConfig::default()
        };
        if let Some(ms) = self.acquire_timeout_ms {
            config.acquire_timeout = Duration::from_millis(ms);
        }
        Ok(PoolDeclaration { spec, config })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/paddock/paddock.toml"), text)
    }

    #[test]
    fn a_full_file_becomes_pools_and_tenants() {
        let config = parse(&format!(
            r#"
[server]
image = "/img/manifest.json"
tcp = "127.0.0.1:8470"

[[tenant]]
name = "acme"
token_sha256 = "{DIGEST}"
admin = true

[[pool]]
name = "py"
min_ready = 2
max_size = 3
reset = "restore"
warmup = ["echo warm"]
max_uses = 10
[pool.limits]
lease_execs_per_second = 20
tenant_throttle_s = 5
"#
        ))
        .expect("valid");
        assert_eq!(config.server.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(
            config.server.tcp,
            Some("127.0.0.1:8470".parse().expect("addr"))
        );
        assert_eq!(config.tenants.len(), 1);
        assert!(config.tenants[0].admin);
        let pool = &config.pools[0];
        assert_eq!(pool.spec.name, "py");
        assert_eq!(pool.spec.reset, ResetStrategy::Restore);
        assert_eq!(pool.spec.warmup, ["echo warm"]);
        assert_eq!((pool.config.min_ready, pool.config.max_size), (2, 3));
        assert_eq!(pool.config.max_uses, Some(10));
        assert_eq!(
            pool.config.limits.lease_execs.map(|l| l.per_second.get()),
            Some(20)
        );
        assert_eq!(pool.config.limits.tenant_throttle, Duration::from_secs(5));
    }

    #[test]
    fn an_unknown_field_names_its_line_and_field() {
        let err = parse(
            r#"[server]
image = "/img/manifest.json"

[[pool]]
name = "py"
min_redy = 2
"#,
        )
        .expect_err("typo");
        let text = err.to_string();
        assert!(text.starts_with("/etc/paddock/paddock.toml: "), "{text}");
        assert!(text.contains("line 6"), "{text}");
        assert!(text.contains("min_redy"), "{text}");
    }

    #[test]
    fn a_pool_names_a_policy_file_beside_the_configuration() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("policies")).expect("policies/");
        std::fs::write(
            dir.path().join("policies/ls.toml"),
            "schema = 1\nname = \"ls-only\"\n[exec]\nprograms = [\"ls\"]\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("policies/bad.toml"),
            "schema = 1\nname = \"bad\"\n[exec]\nprograms = [\"/usr/[\"]\n",
        )
        .expect("write");
        let config_path = dir.path().join("paddock.toml");
        let file = |policy: &str| {
            format!(
                "[server]\nimage = \"/i\"\n\n[[pool]]\nname = \"a\"\n\n[[pool]]\nname = \"b\"\npolicy = \"{policy}\"\n"
            )
        };
        let config = Config::parse(&config_path, &file("policies/ls.toml")).expect("a policy");
        assert!(config.pools[0].config.policy.is_none());
        let policy = config.pools[1].config.policy.as_ref().expect("pool b's");
        assert_eq!(policy.name(), "ls-only");

        for (name, expected) in [
            ("policies/absent.toml", "Could not read"),
            ("policies/bad.toml", "exec.programs[0]"),
        ] {
            match Config::parse(&config_path, &file(name)) {
                Err(err @ ConfigError::Invalid { line: 7, .. }) => {
                    let text = err.to_string();
                    assert!(text.contains("pool.b.policy"), "{text}");
                    assert!(text.contains(expected), "{text}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_wrong_type_names_its_line() {
        let err = parse("[server]\nimage = \"/i\"\n[[pool]]\nname = \"py\"\nmax_size = \"four\"\n")
            .expect_err("a string for a number");
        let text = err.to_string();
        assert!(text.contains("line 5"), "{text}");
    }

    #[test]
    fn contradictions_name_the_pool_its_line_and_field() {
        let err = parse(
            "[server]\nimage = \"/i\"\n\n[[pool]]\nname = \"a\"\n\n[[pool]]\nname = \"b\"\nmin_ready = 5\nmax_size = 2\n",
        )
        .expect_err("min_ready > max_size");
        match &err {
            ConfigError::Invalid { line, field, .. } => {
                assert_eq!(*line, 7, "{err}");
                assert_eq!(field, "pool.b.min_ready");
            }
            other => panic!("{other:?}"),
        }
        let err = parse("[server]\nimage = \"/i\"\n[[pool]]\nname = \"Bad Name\"\n")
            .expect_err("bad name");
        assert!(err.to_string().contains("pool.Bad Name.name"), "{err}");
        let err =
            parse("[server]\nimage = \"/i\"\n[[pool]]\nname = \"a\"\n[[pool]]\nname = \"a\"\n")
                .expect_err("twice");
        assert!(err.to_string().contains("another pool"), "{err}");
        let err = parse(
            "[server]\nimage = \"/i\"\n[[pool]]\nname = \"a\"\n[pool.limits]\nlease_execs_per_second = 0\n",
        )
        .expect_err("zero rate");
        assert!(
            err.to_string()
                .contains("pool.a.limits.lease_execs_per_second"),
            "{err}"
        );
    }

    #[test]
    fn a_shared_folder_in_a_pool_is_refused_by_name_and_line() {
        let err = parse(
            "[server]\nimage = \"/i\"\n[[pool]]\nname = \"a\"\n\
             shared_folders = [{ host_path = \"/srv\", tag = \"t\", guest_path = \"/mnt\" }]\n",
        )
        .expect_err("a pool with a shared folder");
        match &err {
            ConfigError::Invalid {
                line,
                field,
                problem,
                ..
            } => {
                assert_eq!(*line, 3, "{err}");
                assert_eq!(field, "pool.a.shared_folders", "{err}");
                assert!(problem.contains("single sandboxes"), "{err}");
            }
            other => panic!("not a typed refusal: {other:?}"),
        }
    }

    #[test]
    fn resources_default_from_the_vms_and_take_the_files_values() {
        let pool = |resources: &str| {
            parse(&format!(
                "[server]\nimage = \"/i\"\n[[pool]]\nname = \"a\"\nvcpus = 2\nmemory_mib = 512\n{resources}"
            ))
        };
        let defaults = pool("").expect("no [pool.resources]");
        let expected = Profile::Custom(Resources {
            vcpus: 2,
            memory_mib: 512,
        })
        .tuning();
        assert_eq!(defaults.pools[0].spec.tuning, Some(expected));
        let set = pool(
            "[pool.resources]\ncpu_percent = 50\ncpu_shares = 100\nmemory_hard_limit_mib = 1000\n\
             pids_max = 64\ntcg_tb_cache_mib = 128\n",
        )
        .expect("all set");
        let tuning = set.pools[0].spec.tuning.expect("tuning");
        assert_eq!(tuning.cpu_quota, Some(CpuQuota::percent_of_one_cpu(50)));
        assert_eq!(tuning.cpu_shares, Some(100));
        assert_eq!(tuning.memory_hard_limit_mib, Some(1000));
        assert_eq!(tuning.pids_max, Some(64));
        assert_eq!(tuning.tcg_tb_cache_mib, Some(128));
        let smaller_cache = pool("[pool.resources]\ntcg_tb_cache_mib = 64\n").expect("cache");
        assert_eq!(
            smaller_cache.pools[0]
                .spec
                .tuning
                .and_then(|t| t.memory_hard_limit_mib),
            expected
                .memory_hard_limit_mib
                .map(|limit| limit - paddock::libvirt::TCG_TB_CACHE_MIB + 64),
            "the default memory limit follows the cache"
        );
        for (resources, field) in [
            ("cpu_percent = 0", "pool.a.resources.cpu_percent"),
            ("cpu_shares = 1", "pool.a.resources.cpu_shares"),
            (
                "memory_hard_limit_mib = 768",
                "pool.a.resources.memory_hard_limit_mib",
            ),
            ("pids_max = 17", "pool.a.resources.pids_max"),
            ("tcg_tb_cache_mib = 8", "pool.a.resources.tcg_tb_cache_mib"),
        ] {
            let err = pool(&format!("[pool.resources]\n{resources}\n")).expect_err(resources);
            match &err {
                ConfigError::Invalid {
                    line, field: at, ..
                } => {
                    assert_eq!(*line, 3, "{err}");
                    assert_eq!(at, field, "{err}");
                }
                other => panic!("{resources}: {other:?}"),
            }
        }
        let unknown = pool("[pool.resources]\ncpus = 2\n").expect_err("unknown key");
        assert!(unknown.to_string().contains("cpus"), "{unknown}");
    }

    #[test]
    fn pool_names_follow_the_librarys_rule_and_bad_ones_name_their_line() {
        let file = |name: &str| {
            format!(
                "[server]\nimage = \"/i\"\n\n[[pool]]\nname = \"ok\"\n\n[[pool]]\nname = {}\n",
                toml::Value::String(name.to_owned())
            )
        };
        for good in ["py", "ci-runners", "web_3", "0day", "abcdefghijklmnopqrst"] {
            let config = parse(&file(good)).unwrap_or_else(|err| panic!("{good}: {err}"));
            assert_eq!(config.pools[1].spec.name, good);
        }
        // Each bad name, and words of the rule its error must give.
        let bad = [
            ("", "cannot be empty"),
            ("abcdefghijklmnopqrstu", "at most 20"),
            ("../etc", "only a-z"),
            ("a/b", "only a-z"),
            ("Bad Name", "only a-z"),
            ("a b", "only a-z"),
            ("q\"uote", "only a-z"),
            ("<x>", "only a-z"),
            ("a&b", "only a-z"),
            ("-rf", "starts with"),
            ("_x", "starts with"),
        ];
        for (name, rule) in bad {
            let err = parse(&file(name)).expect_err(name);
            match &err {
                ConfigError::Invalid {
                    line,
                    field,
                    problem,
                    ..
                } => {
                    assert_eq!(*line, 7, "{name:?}: {err}");
                    assert_eq!(field, &format!("pool.{name}.name"), "{err}");
                    assert!(problem.contains(rule), "{name:?}: {err}");
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn tenants_need_a_digest_and_a_name_of_their_own() {
        let bad_digest =
            "[server]\nimage = \"/i\"\n[[tenant]]\nname = \"t\"\ntoken_sha256 = \"abc\"\n";
        let err = parse(bad_digest).expect_err("short digest");
        assert!(err.to_string().contains("tenant.t.token_sha256"), "{err}");
        let operator = format!(
            "[server]\nimage = \"/i\"\n[[tenant]]\nname = \"{}\"\ntoken_sha256 = \"{DIGEST}\"\n",
            crate::auth::OPERATOR
        );
        assert!(parse(&operator).is_err());
        let missing = parse("[server]\n").expect_err("no image");
        assert!(missing.to_string().contains("image"), "{missing}");
    }
}
