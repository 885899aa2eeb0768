//! The agent's configuration: one TOML file, most keys also flags. Unknown
//! keys and bad values are one-sentence errors naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::relabel::RuleConfig;

/// Everything `ember agent` reads from its config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Samples per second per CPU.
    pub frequency: u64,
    /// Length of one profile window (`15s`).
    pub window: String,
    /// Capture kernel stacks.
    pub kernel: bool,
    /// Node name for the `node` label (default: the host name).
    pub node: Option<String>,
    /// Local history.
    pub store: StoreConfig,
    /// The HTTP endpoint.
    pub http: HttpConfig,
    /// The in-memory push queue.
    pub queue: QueueConfig,
    /// Kernel map sizes.
    pub sampler: SamplerConfig,
    /// Backends to push to.
    pub push: Vec<PushConfig>,
    /// Prometheus-style relabel rules, applied to every process's labels.
    pub relabel: Vec<RuleConfig>,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory of stored windows; empty disables local history.
    pub dir: PathBuf,
    /// Windows older than this are deleted (`24h`).
    pub retention: String,
    /// The directory is kept under this size (`1GiB`).
    pub max_size: String,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; empty disables the endpoint.
    pub listen: String,
    /// Besides root, uids that may read profiles and windows over loopback.
    pub allow_uids: Vec<u32>,
    /// Groups whose members may (resolved at start).
    pub allow_groups: Vec<String>,
    /// File holding a bearer token that grants access from any client
    /// (read at start, never logged); required for a non-loopback listen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
}

/// `[queue]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Memory bound of profiles waiting to be pushed (`64MiB`).
    pub max_size: String,
}

/// `[sampler]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// Count-map entries per generation.
    pub count_map_size: u32,
    /// Stack-map entries per generation.
    pub stack_map_size: u32,
    /// How user stacks are walked: `tables` (unwind tables from
    /// `.eh_frame`, frame pointers where there are none) or
    /// `frame-pointers`.
    pub unwind: String,
    /// Kernel memory the unwind tables may take (`256MiB`).
    pub unwind_memory: String,
}

/// One `[[push]]` backend.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// `pyroscope` (Connect Push), `pyroscope-ingest` (/ingest), `parca` (gRPC WriteRaw over h2c or TLS)
    /// or `parca-json` (grpc-gateway /api/profiles/writeraw).
    pub kind: String,
    /// Base URL, e.g. `http://pyroscope:4040`.
    pub url: String,
    /// `X-Scope-OrgID` tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// HTTP Basic user.
    #[serde(default)]
    pub basic_auth_user: Option<String>,
    /// File holding the Basic password (read at start, never logged).
    #[serde(default)]
    pub basic_auth_password_file: Option<PathBuf>,
    /// File holding a bearer token (read at start, never logged).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// PEM file of extra CA certificates to trust for `https://` (a private
    /// CA); the system's roots are always trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Request timeout (`10s`).
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Gzip request bodies where the protocol allows it.
    #[serde(default = "yes")]
    pub gzip: bool,
}

fn default_timeout() -> String {
    "10s".into()
}
fn yes() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Config {
            frequency: 19,
            window: "15s".into(),
            kernel: true,
            node: None,
            store: StoreConfig::default(),
            http: HttpConfig::default(),
            queue: QueueConfig::default(),
            sampler: SamplerConfig::default(),
            push: Vec::new(),
            relabel: Vec::new(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: PathBuf::from("/var/lib/ember"),
            retention: "24h".into(),
            max_size: "1GiB".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:6060".into(),
            allow_uids: Vec::new(),
            allow_groups: Vec::new(),
            bearer_token_file: None,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_size: "64MiB".into(),
        }
    }
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            count_map_size: 8192,
            stack_map_size: 4096,
            unwind: "tables".into(),
            unwind_memory: "256MiB".into(),
        }
    }
}

/// The config with every value parsed and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config as written (for `--check-config`).
    pub raw: Config,
    /// Window length.
    pub window: Duration,
    /// Store retention by age.
    pub retention: Duration,
    /// Store size bound in bytes.
    pub store_max_bytes: u64,
    /// Push queue bound in bytes.
    pub queue_max_bytes: u64,
    /// HTTP listen address.
    pub listen: Option<SocketAddr>,
    /// Who may read profiles and windows over HTTP.
    pub http_access: super::http::Access,
    /// Node label.
    pub node: String,
    /// Compiled relabel rules.
    pub rules: Vec<super::relabel::Rule>,
    /// Per-backend request timeouts.
    pub push_timeouts: Vec<Duration>,
    /// Walk user stacks with unwind tables.
    pub unwind_tables: bool,
    /// Unwind table memory bound in bytes.
    pub unwind_memory: u64,
}

/// Reads a TOML config file.
pub fn load(path: &std::path::Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    parse(&text).with_context(|| format!("config file {}", path.display()))
}

/// Parses TOML text; errors are one line naming the key.
pub fn parse(text: &str) -> Result<Config> {
    toml::from_str(text).map_err(|e| {
        let msg = e.message().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                anyhow::anyhow!("line {line}: {msg}")
            }
            None => anyhow::anyhow!("{msg}"),
        }
    })
}

impl Config {
    /// Checks every value; the first problem is the error.
    pub fn validate(&self) -> Result<Settings> {
        if !(1..=1000).contains(&self.frequency) {
            bail!("frequency = {} is out of range; use 1 to 1000 Hz (19 is the default for the agent)", self.frequency);
        }
        let window = parse_duration_key("window", &self.window)?;
        if window < Duration::from_secs(1) || window > Duration::from_secs(3600) {
            bail!("window = {:?} is out of range; use 1s to 1h", self.window);
        }
        let retention = parse_duration_key("store.retention", &self.store.retention)?;
        let store_max_bytes = parse_size("store.max_size", &self.store.max_size)?;
        let queue_max_bytes = parse_size("queue.max_size", &self.queue.max_size)?;
        let listen = if self.http.listen.is_empty() {
            None
        } else {
            Some(self.http.listen.parse().map_err(|_| {
                anyhow::anyhow!(
                    "http.listen = {:?} is not an address; use e.g. \"127.0.0.1:6060\"",
                    self.http.listen
                )
            })?)
        };
        let http_access = super::http::Access::from_config(&self.http, listen)?;
        if self.sampler.count_map_size < 64 || self.sampler.stack_map_size < 64 {
            bail!("sampler.count_map_size and sampler.stack_map_size must be at least 64");
        }
        let unwind_tables = match self.sampler.unwind.as_str() {
            "tables" => true,
            "frame-pointers" => false,
            other => {
                bail!("sampler.unwind = {other:?} is unknown; use \"tables\" or \"frame-pointers\"")
            }
        };
        let unwind_memory = parse_size("sampler.unwind_memory", &self.sampler.unwind_memory)?;
        let mut push_timeouts = Vec::new();
        for (i, p) in self.push.iter().enumerate() {
            let n = i + 1;
            if !["pyroscope", "pyroscope-ingest", "parca", "parca-json"].contains(&p.kind.as_str())
            {
                bail!("push #{n}: kind = {:?} is unknown; use pyroscope, pyroscope-ingest, parca or parca-json", p.kind);
            }
            let uri: hyper::Uri = p
                .url
                .parse()
                .map_err(|_| anyhow::anyhow!("push #{n}: url = {:?} is not a URL", p.url))?;
            if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
                bail!(
                    "push #{n}: url = {:?} must start with http:// or https:// and name a host",
                    p.url
                );
            }
            if p.basic_auth_password_file.is_some() && p.basic_auth_user.is_none() {
                bail!("push #{n}: basic_auth_password_file is set but basic_auth_user is not");
            }
            for f in [
                &p.basic_auth_password_file,
                &p.bearer_token_file,
                &p.ca_file,
            ]
            .into_iter()
            .flatten()
            {
                if std::fs::metadata(f).is_err() {
                    bail!("push #{n}: cannot read {}", f.display());
                }
            }
            push_timeouts.push(parse_duration_key(
                &format!("push #{n} timeout"),
                &p.timeout,
            )?);
        }
        let rules = self
            .relabel
            .iter()
            .enumerate()
            .map(|(i, r)| super::relabel::Rule::compile(r, i + 1).map_err(|e| anyhow::anyhow!(e)))
            .collect::<Result<Vec<_>>>()?;
        let node = self.node.clone().unwrap_or_else(crate::record::hostname);
        Ok(Settings {
            raw: self.clone(),
            window,
            retention,
            store_max_bytes,
            queue_max_bytes,
            listen,
            http_access,
            node,
            rules,
            push_timeouts,
            unwind_tables,
            unwind_memory,
        })
    }
}

fn parse_duration_key(key: &str, v: &str) -> Result<Duration> {
    crate::record::parse_duration(v)
        .map_err(|_| anyhow::anyhow!("{key} = {v:?} is not a duration; use e.g. 15s, 10m, 24h"))
}

/// Parses `64MiB`, `1GiB`, `500MB`, `1048576`.
pub fn parse_size(key: &str, v: &str) -> Result<u64> {
    let t = v.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("{key} = {v:?} is not a size; use e.g. 64MiB or 1GiB"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" | "K" | "k" => 1024.0,
        "MiB" | "M" => 1048576.0,
        "GiB" | "G" => 1073741824.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => bail!("{key} = {v:?} has an unknown unit; use B, KiB, MiB or GiB"),
    };
    let bytes = (n * mult) as u64;
    if bytes == 0 {
        bail!("{key} = {v:?} must be greater than zero");
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let s = Config::default().validate().unwrap();
        assert_eq!(s.window, Duration::from_secs(15));
        assert_eq!(s.queue_max_bytes, 64 << 20);
        assert_eq!(s.store_max_bytes, 1 << 30);
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("frequency = 19\nwindw = \"15s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("windw") && e.contains("line 2"), "{e}");
        let e = parse("[store]\nretention = 5\n").unwrap_err().to_string();
        assert!(e.contains("retention") || e.contains("invalid type"), "{e}");
        let c = parse("window = \"soon\"").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("window = \"soon\""));
        let c = parse("[[push]]\nkind = \"zipkin\"\nurl = \"http://x\"").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("kind = \"zipkin\""));
        let c = parse("[queue]\nmax_size = \"12 parsecs\"").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("queue.max_size"));
        assert_eq!(parse_size("k", "64MiB").unwrap(), 64 << 20);
    }
}
