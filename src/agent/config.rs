//! The agent's configuration: one TOML file, most keys also flags. Unknown
//! keys and bad values are one-sentence errors naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::relabel::RuleConfig;
use crate::util::limits;

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
    /// More directories with separate debug files by build ID
    /// (`DIR/.build-id/xx/rest.debug`), searched after /usr/lib/debug.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub debug_dirs: Vec<PathBuf>,
    /// Fetch missing debug files from the servers `DEBUGINFOD_URLS` names
    /// (in the background; later windows are named once they arrive).
    pub debuginfod: bool,
    /// Walk the Python frames of CPython processes (3.8-3.13).
    pub python: bool,
    /// Record off-CPU time (where threads wait) next to CPU samples.
    pub off_cpu: bool,
    /// Which build of the BPF program to load: `auto` (the newest the
    /// kernel supports), `modern` (Linux 5.17+) or `compat` (5.10-5.16).
    pub bpf_variant: String,
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
    /// Most user frames walked with unwind tables (1 to 512).
    pub max_depth: u32,
}

/// One `[[push]]` backend. `Debug` shows header values as `<redacted>`.
#[derive(Clone, Deserialize, Serialize)]
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

impl std::fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConfig")
            .field("kind", &self.kind)
            .field("url", &crate::util::redact_url(&self.url))
            .field("tenant", &self.tenant)
            .field("basic_auth_user", &self.basic_auth_user)
            .field("basic_auth_password_file", &self.basic_auth_password_file)
            .field("bearer_token_file", &self.bearer_token_file)
            .field(
                "headers",
                &self
                    .headers
                    .keys()
                    .map(|k| (k, "<redacted>"))
                    .collect::<Vec<_>>(),
            )
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("gzip", &self.gzip)
            .finish()
    }
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
            debug_dirs: Vec::new(),
            debuginfod: true,
            python: true,
            off_cpu: false,
            bpf_variant: "auto".into(),
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
            max_depth: crate::sample::abi::MAX_USER_DEPTH as u32,
        }
    }
}

/// The config with every value parsed and checked: what the agent runs
/// with. The config as written is kept only for [`Settings::redacted_toml`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config as written (for `--check-config`).
    raw: Config,
    /// Samples per second per CPU.
    pub frequency: u64,
    /// Window length.
    pub window: Duration,
    /// Capture kernel stacks.
    pub kernel_stacks: bool,
    /// Directory of stored windows; `None` when local history is disabled
    /// (`store.dir` empty).
    pub store_dir: Option<PathBuf>,
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
    /// The push backends, in config order.
    pub push: Vec<PushTarget>,
    /// Count-map entries per generation.
    pub count_map_size: u32,
    /// Most user frames walked with unwind tables.
    pub max_depth: u32,
    /// Stack-map entries per generation.
    pub stack_map_size: u32,
    /// Walk user stacks with unwind tables.
    pub unwind_tables: bool,
    /// Unwind table memory bound in bytes.
    pub unwind_memory: u64,
    /// More directories with separate debug files.
    pub debug_dirs: Vec<PathBuf>,
    /// Fetch missing debug files from debuginfod.
    pub debuginfod: bool,
    /// Walk Python frames.
    pub python: bool,
    /// Record off-CPU time.
    pub off_cpu: bool,
    /// Which build of the BPF program to load.
    pub bpf_variant: crate::sample::Variant,
}

impl Settings {
    /// The config as written, with inline secrets and URL user information
    /// redacted ([`Config::redacted`]), as TOML: what `--check-config`
    /// prints.
    pub fn redacted_toml(&self) -> Result<String> {
        toml::to_string_pretty(&self.raw.redacted())
            .map_err(|e| anyhow::anyhow!("cannot show the configuration as TOML ({e})"))
    }
}

/// The protocol of a push backend (`kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    /// `pyroscope`: Pyroscope's Connect `Push` API.
    Pyroscope,
    /// `pyroscope-ingest`: Pyroscope's `/ingest` API.
    PyroscopeIngest,
    /// `parca`: Parca's gRPC `WriteRaw`, over h2c or TLS.
    Parca,
    /// `parca-json`: Parca's grpc-gateway `/api/profiles/writeraw`.
    ParcaJson,
}

impl PushKind {
    /// The kind named `name` in the config, if there is one.
    pub fn parse(name: &str) -> Option<PushKind> {
        [
            PushKind::Pyroscope,
            PushKind::PyroscopeIngest,
            PushKind::Parca,
            PushKind::ParcaJson,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// The name the config uses for this kind.
    pub fn name(self) -> &'static str {
        match self {
            PushKind::Pyroscope => "pyroscope",
            PushKind::PyroscopeIngest => "pyroscope-ingest",
            PushKind::Parca => "parca",
            PushKind::ParcaJson => "parca-json",
        }
    }
}

/// One `[[push]]` backend, checked. `Debug` shows the URL redacted and
/// header values as `<redacted>`.
#[derive(Clone)]
pub struct PushTarget {
    /// The protocol.
    pub kind: PushKind,
    /// Base URL as written: http(s), with a host, without user information,
    /// query or fragment.
    pub url: String,
    /// `url`, parsed.
    pub uri: hyper::Uri,
    /// `X-Scope-OrgID` tenant.
    pub tenant: Option<String>,
    /// Extra request headers (values may be credentials).
    pub headers: Vec<(String, Secret)>,
    /// PEM file of extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// Request timeout.
    pub timeout: Duration,
    /// The `Authorization` value sent (read from the credential files at
    /// validation, so what was checked is what is sent).
    pub auth: Option<Secret>,
    /// Gzip request bodies where the protocol allows it.
    pub gzip: bool,
}

impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTarget")
            .field("kind", &self.kind)
            .field("url", &crate::util::redact_url(&self.url))
            .field("tenant", &self.tenant)
            .field("headers", &self.headers)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("auth", &self.auth)
            .field("gzip", &self.gzip)
            .finish()
    }
}

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest token or password file read.
const MAX_SECRET_BYTES: u64 = 64 << 10;
/// Largest `ca_file` accepted.
const MAX_CA_BYTES: u64 = 1 << 20;

/// Request headers ember sets itself or that would change the request's
/// framing; `headers` may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// A credential: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a file of at most `max` bytes as UTF-8 (`None` when larger); with
/// `regular_only`, opened non-blocking and refused unless a regular file.
pub(crate) fn read_bounded(
    path: &std::path::Path,
    max: u64,
    regular_only: bool,
) -> std::io::Result<Option<String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Credentials must be regular files: opened non-blocking, so a FIFO
    // named there is refused instead of waited on. The config file may be
    // a pipe (`--config <(...)`); it is read up to the bound all the same.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(if regular_only { libc::O_NONBLOCK } else { 0 })
        .open(path)?;
    let kind = f.metadata()?.file_type();
    if kind.is_dir() || (regular_only && !kind.is_file()) {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Ok(None);
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| std::io::Error::other("not UTF-8 text"))
}

/// Reads a TOML config file.
pub fn load(path: &std::path::Path) -> Result<Config> {
    let text = read_bounded(path, MAX_CONFIG_BYTES, false)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read the config file {} ({})",
                path.display(),
                crate::export::plain_io(&e)
            )
        })?
        .ok_or_else(|| {
            anyhow::anyhow!("the config file {} is larger than 1 MiB", path.display())
        })?;
    parse(&text).with_context(|| format!("config file {}", path.display()))
}

/// Parses TOML text; errors are one line naming the key.
pub fn parse(text: &str) -> Result<Config> {
    toml::from_str(text).map_err(|e| {
        let msg = crate::util::printable(e.message(), 300);
        match e.span() {
            Some(span) => {
                let upto = text.get(..span.start.min(text.len())).unwrap_or(text);
                let line = upto.matches('\n').count() + 1;
                anyhow::anyhow!("line {line}: {msg}")
            }
            None => anyhow::anyhow!("{msg}"),
        }
    })
}

fn duration_key(key: &str, v: &str, range: (Duration, Duration)) -> Result<Duration> {
    crate::util::duration_in(
        &format!("{key} = {}", crate::util::quote(v)),
        v,
        range.0,
        range.1,
    )
}

fn size_key(key: &str, v: &str, range: (u64, u64)) -> Result<u64> {
    crate::util::size_in(
        &format!("{key} = {}", crate::util::quote(v)),
        v,
        range.0,
        range.1,
    )
}

/// True if `v` can go in a header as written: no control characters (CR,
/// LF, NUL, tab...) and only bytes HTTP allows.
fn header_safe(v: &str) -> bool {
    !v.chars().any(char::is_control) && hyper::header::HeaderValue::from_str(v).is_ok()
}

/// One line of a token or password file: surrounding blanks and the final
/// newline trimmed, nothing that cannot go in a header.
fn read_secret(n: usize, key: &str, path: &std::path::Path, token: bool) -> Result<String> {
    let text = read_bounded(path, MAX_SECRET_BYTES, true)
        .map_err(|e| {
            anyhow::anyhow!(
                "push #{n}: cannot read {key} {} ({})",
                path.display(),
                crate::export::plain_io(&e)
            )
        })?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "push #{n}: {key} {} is larger than 64 KiB; it must hold one line",
                path.display()
            )
        })?;
    let v = text.trim();
    if v.is_empty() {
        bail!("push #{n}: {key} {} is empty", path.display());
    }
    if v.chars().any(char::is_control) {
        bail!(
            "push #{n}: {key} {} has a line break or control character inside the value; it must hold one line (a trailing newline is fine)",
            path.display()
        );
    }
    if token && !v.chars().all(|c| c.is_ascii_graphic()) {
        bail!(
            "push #{n}: {key} {} must hold printable ASCII without spaces",
            path.display()
        );
    }
    Ok(v.to_string())
}

impl PushConfig {
    /// Checks backend number `n` (counted from 1) and returns what the
    /// pusher sends with, credential files read.
    fn validate(&self, n: usize) -> Result<PushTarget> {
        use base64::Engine as _;
        let Some(kind) = PushKind::parse(&self.kind) else {
            bail!(
                "push #{n}: kind = {} is unknown; use pyroscope, pyroscope-ingest, parca or parca-json",
                crate::util::quote(&self.kind)
            );
        };
        let shown = crate::util::quote(&crate::util::redact_url(&self.url));
        let uri: hyper::Uri = self
            .url
            .parse()
            .map_err(|_| anyhow::anyhow!("push #{n}: url = {shown} is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
            bail!("push #{n}: url = {shown} must start with http:// or https:// and name a host");
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            bail!(
                "push #{n}: url = {shown} has a user name or password in it; put the user in basic_auth_user and the password in a file named by basic_auth_password_file"
            );
        }
        if uri.query().is_some() || self.url.contains('#') {
            bail!("push #{n}: url = {shown} has a query or fragment; give the server's base URL such as http://pyroscope:4040");
        }
        if self.basic_auth_password_file.is_some() && self.basic_auth_user.is_none() {
            bail!("push #{n}: basic_auth_password_file is set but basic_auth_user is not");
        }
        if self.bearer_token_file.is_some() && self.basic_auth_user.is_some() {
            bail!("push #{n}: set either bearer_token_file or basic_auth_user, not both");
        }
        if let Some(t) = &self.tenant {
            if t.is_empty() || !header_safe(t) {
                bail!("push #{n}: tenant must be non-empty and hold no control characters or bytes HTTP headers cannot carry");
            }
        }
        for (k, v) in &self.headers {
            let name = crate::util::quote(k);
            if hyper::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                bail!("push #{n}: headers has {name}, which is not a valid HTTP header name");
            }
            if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                bail!("push #{n}: headers may not set {name}; ember sets it itself");
            }
            if k.eq_ignore_ascii_case("authorization")
                && (self.bearer_token_file.is_some() || self.basic_auth_user.is_some())
            {
                bail!("push #{n}: headers sets authorization as well as bearer_token_file or basic_auth_user; keep one");
            }
            if !header_safe(v) {
                bail!("push #{n}: the value of headers {name} has a line break, control character or byte HTTP headers cannot carry");
            }
        }
        if let Some(f) = &self.ca_file {
            let ok = std::fs::metadata(f).map_err(|e| {
                anyhow::anyhow!(
                    "push #{n}: cannot read ca_file {} ({})",
                    f.display(),
                    crate::export::plain_io(&e)
                )
            })?;
            if !ok.is_file() || ok.len() > MAX_CA_BYTES {
                bail!(
                    "push #{n}: ca_file {} must be a PEM file of at most 1 MiB",
                    f.display()
                );
            }
        }
        let auth = if let Some(f) = &self.bearer_token_file {
            Some(format!(
                "Bearer {}",
                read_secret(n, "bearer_token_file", f, true)?
            ))
        } else if let Some(user) = &self.basic_auth_user {
            if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
                bail!("push #{n}: basic_auth_user must be non-empty, without ':' or control characters");
            }
            let pw = match &self.basic_auth_password_file {
                Some(f) => read_secret(n, "basic_auth_password_file", f, false)?,
                None => String::new(),
            };
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
            ))
        } else {
            None
        };
        let timeout = duration_key(
            &format!("push #{n} timeout"),
            &self.timeout,
            limits::PUSH_TIMEOUT,
        )?;
        Ok(PushTarget {
            kind,
            url: self.url.clone(),
            uri,
            tenant: self.tenant.clone(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Secret(v.clone())))
                .collect(),
            ca_file: self.ca_file.clone(),
            timeout,
            auth: auth.map(Secret),
            gzip: self.gzip,
        })
    }
}

impl Config {
    /// Checks every value; the first problem is the error.
    pub fn validate(&self) -> Result<Settings> {
        if !(1..=1000).contains(&self.frequency) {
            bail!("frequency = {} is out of range; use 1 to 1000 Hz (19 is the default for the agent)", self.frequency);
        }
        let window = duration_key("window", &self.window, limits::WINDOW)?;
        let retention = duration_key("store.retention", &self.store.retention, limits::RETENTION)?;
        let store_max_bytes = size_key("store.max_size", &self.store.max_size, limits::STORE_SIZE)?;
        let queue_max_bytes = size_key("queue.max_size", &self.queue.max_size, limits::QUEUE_SIZE)?;
        let listen = if self.http.listen.is_empty() {
            None
        } else {
            Some(self.http.listen.parse().map_err(|_| {
                anyhow::anyhow!(
                    "http.listen = {} is not an address; use e.g. \"127.0.0.1:6060\"",
                    crate::util::quote(&self.http.listen)
                )
            })?)
        };
        let http_access = super::http::Access::from_config(&self.http, listen)?;
        for (key, v, (lo, hi)) in [
            (
                "sampler.count_map_size",
                self.sampler.count_map_size,
                limits::COUNT_MAP,
            ),
            (
                "sampler.stack_map_size",
                self.sampler.stack_map_size,
                limits::STACK_MAP,
            ),
            (
                "sampler.max_depth",
                self.sampler.max_depth,
                limits::MAX_DEPTH,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                bail!("{key} = {v} is out of range; use {lo} to {hi}");
            }
        }
        let unwind_tables = match self.sampler.unwind.as_str() {
            "tables" => true,
            "frame-pointers" => false,
            _ => {
                bail!(
                    "sampler.unwind = {} is unknown; use \"tables\" or \"frame-pointers\"",
                    crate::util::quote(&self.sampler.unwind)
                )
            }
        };
        let unwind_memory = size_key(
            "sampler.unwind_memory",
            &self.sampler.unwind_memory,
            limits::UNWIND_MEMORY,
        )?;
        let push = self
            .push
            .iter()
            .enumerate()
            .map(|(i, p)| p.validate(i + 1))
            .collect::<Result<Vec<_>>>()?;
        let rules = super::relabel::compile_all(&self.relabel)?;
        let node = self.node.clone().unwrap_or_else(crate::util::hostname);
        let store_dir = (!self.store.dir.as_os_str().is_empty()).then(|| self.store.dir.clone());
        if let Some(d) = self.debug_dirs.iter().find(|d| !d.is_absolute()) {
            bail!(
                "debug_dirs: {} is not an absolute path; give each directory from /",
                crate::util::quote(&d.to_string_lossy())
            );
        }
        Ok(Settings {
            raw: self.clone(),
            frequency: self.frequency,
            window,
            kernel_stacks: self.kernel,
            store_dir,
            retention,
            store_max_bytes,
            queue_max_bytes,
            listen,
            http_access,
            node,
            rules,
            push,
            count_map_size: self.sampler.count_map_size,
            max_depth: self.sampler.max_depth,
            stack_map_size: self.sampler.stack_map_size,
            unwind_tables,
            unwind_memory,
            debug_dirs: self.debug_dirs.clone(),
            debuginfod: self.debuginfod,
            python: self.python,
            off_cpu: self.off_cpu,
            bpf_variant: crate::sample::Variant::parse(&self.bpf_variant)
                .map_err(|e| anyhow::anyhow!("bpf_variant: {e}"))?,
        })
    }

    /// The config with every secret that is written inline (header
    /// values) replaced by `<redacted>` and URLs shown without user
    /// information: what `--check-config` prints.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for p in &mut c.push {
            p.url = crate::util::redact_url(&p.url);
            for v in p.headers.values_mut() {
                *v = "<redacted>".into();
            }
        }
        c
    }
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
    }

    #[test]
    fn settings_carry_typed_values() {
        let s = Config::default().validate().unwrap();
        assert_eq!(s.store_dir, Some(PathBuf::from("/var/lib/ember")));
        assert_eq!((s.frequency, s.kernel_stacks), (19, true));
        assert_eq!((s.count_map_size, s.stack_map_size), (8192, 4096));
        assert!(s.push.is_empty());
        let c = parse(
            "frequency = 49\nkernel = false\n[store]\ndir = \"\"\n[sampler]\nstack_map_size = 2048\n\
             [[push]]\nkind = \"parca-json\"\nurl = \"https://p:7070/\"\ntimeout = \"3s\"\n\
             headers = { \"x-key\" = \"hunter2\" }\ngzip = false",
        )
        .unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.store_dir, None, "an empty store.dir disables the store");
        assert_eq!(
            (s.frequency, s.kernel_stacks, s.stack_map_size),
            (49, false, 2048)
        );
        let p = &s.push[0];
        assert_eq!(p.kind, PushKind::ParcaJson);
        assert_eq!(PushKind::parse(p.kind.name()), Some(p.kind));
        assert_eq!(p.uri.host(), Some("p"));
        assert_eq!((p.timeout, p.gzip), (Duration::from_secs(3), false));
        assert_eq!(p.headers[0].0, "x-key");
        assert_eq!(p.headers[0].1.expose(), "hunter2");
        assert!(
            !format!("{s:?}").contains("hunter2"),
            "Debug shows a header value"
        );
        let shown = s.redacted_toml().unwrap();
        assert_eq!(shown, toml::to_string_pretty(&c.redacted()).unwrap());
        assert!(shown.contains("x-key = \"<redacted>\"") && !shown.contains("hunter2"));
    }

    fn push_err(extra: &str) -> String {
        let c = parse(&format!(
            "[[push]]\nkind = \"pyroscope\"\nurl = \"http://h:4040\"\n{extra}"
        ))
        .unwrap();
        match c.validate() {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn push_values_are_checked() {
        assert_eq!(push_err(""), "");
        assert_eq!(
            push_err("tenant = \"team-a\"\nheaders = { \"x-key\" = \"v\" }"),
            ""
        );
        let e = push_err("tenant = \"a\\nb\"");
        assert!(e.contains("tenant"), "{e}");
        let e = push_err("headers = { \"host\" = \"evil\" }");
        assert!(e.contains("may not set \"host\""), "{e}");
        let e = push_err("headers = { \"bad name\" = \"v\" }");
        assert!(e.contains("not a valid HTTP header name"), "{e}");
        let e = push_err("headers = { \"x-key\" = \"secret\\u0000\" }");
        assert!(e.contains("x-key") && !e.contains("secret"), "{e}");
        let e = push_err("headers = { \"Authorization\" = \"x\" }\nbasic_auth_user = \"u\"");
        assert!(e.contains("keep one"), "{e}");
        let e = push_err("basic_auth_user = \"a:b\"");
        assert!(e.contains("basic_auth_user"), "{e}");
        let e = push_err("bearer_token_file = \"/no/such/token\"");
        assert!(
            e.contains("cannot read bearer_token_file /no/such/token"),
            "{e}"
        );
        let e = push_err("bearer_token_file = \"/proc\"");
        assert!(e.contains("bearer_token_file /proc"), "{e}");
        let fifo = std::env::temp_dir().join(format!("ember-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = push_err(&format!("bearer_token_file = \"{}\"", fifo.display()));
        let _ = std::fs::remove_file(&fifo);
        assert!(e.contains("not a regular file"), "{e}");
        let e = push_err("ca_file = \"/dev/zero\"");
        assert!(e.contains("at most 1 MiB"), "{e}");
        for (url, want) in [
            ("http://u:pw@h/", "basic_auth_password_file"),
            ("http://h/?token=pw", "has a query"),
            ("http://h/#pw", "has a query or fragment"),
        ] {
            let c = parse(&format!("[[push]]\nkind = \"parca\"\nurl = \"{url}\"")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want) && !e.contains("pw"), "{url}: {e}");
        }
    }
}
