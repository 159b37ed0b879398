//! The TOML configuration of `hoard server`, validated once at start into typed values.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hoard_types::Geometry;
use serde::{Deserialize, Deserializer};

/// A size in bytes, written as an integer or with a unit: `4MiB`, `1 GiB`, `512k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '_')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .replace('_', "")
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            u => return Err(format!("invalid size {s:?}: unknown unit {u:?}")),
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("invalid size {s:?}: too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", human_bytes(self.0))
    }
}

/// `1.5 GiB`-style rendering of a byte count.
pub fn human_bytes(n: u64) -> String {
    hoard_types::ByteSize(n).to_string()
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?}: {e} (e.g. \"30s\", \"15m\")"
        ))
    })
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_geometry<'de, D: Deserializer<'de>>(d: D) -> Result<Geometry, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn de_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse()
        .map_err(|_| serde::de::Error::custom(format!("invalid address {s:?}: expected IP:PORT")))
}

fn de_opt_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    de_addr(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeSection,
    pub meta: Option<MetaSection>,
    pub frontend: Option<FrontendSection>,
    pub volume: Option<VolumeSection>,
    pub repair: Option<RepairSection>,
    pub admin: Option<AdminSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairSection {
    /// Meta's URL.
    pub meta: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This process's name in the cell; the volume role needs one.
    pub id: Option<String>,
    /// Serve in the clear on addresses other than loopback. Hoard's ports have no TLS yet, so a role
    /// that listens beyond loopback refuses to start unless this says so.
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaSection {
    #[serde(deserialize_with = "de_addr")]
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(default = "default_geometry", deserialize_with = "de_geometry")]
    pub ec: Geometry,
    #[serde(default = "default_extent_size")]
    pub extent_size: Size,
    #[serde(default = "default_lease", deserialize_with = "de_duration")]
    pub lease: Duration,
    #[serde(default = "default_grace", deserialize_with = "de_duration")]
    pub heartbeat_grace: Duration,
    #[serde(default)]
    pub failure_domain: FailureDomain,
    /// Disks filled past this share of their capacity take no new members.
    #[serde(default = "default_high_water")]
    pub high_water: f64,
    /// How long a deleted block's bytes stay for Undelete and re-puts.
    #[serde(default = "default_delete_grace", deserialize_with = "de_duration")]
    pub delete_grace: Duration,
    /// How long after a presence answer a block is kept whatever a delete's token.
    #[serde(default = "default_reference_window", deserialize_with = "de_duration")]
    pub reference_window: Duration,
    /// How stale a block's recorded assertion may be before a presence answer rewrites it.
    #[serde(default = "default_assert_refresh", deserialize_with = "de_duration")]
    pub assert_refresh: Duration,
    /// A sealed volume whose reclaimable share of its bytes reaches this is compacted (until an
    /// operator sets the live knob).
    #[serde(default = "default_compaction_threshold")]
    pub compaction_threshold: f64,
    /// How often the trash inspector looks at the volume servers' uncleared trash entries.
    #[serde(
        default = "default_trash_inspect_every",
        deserialize_with = "de_duration"
    )]
    pub trash_inspect_every: Duration,
}

fn default_delete_grace() -> Duration {
    hoard_meta::index_ops::DeletePolicy::default().delete_grace
}

fn default_reference_window() -> Duration {
    hoard_meta::index_ops::DeletePolicy::default().reference_window
}

fn default_assert_refresh() -> Duration {
    hoard_meta::index_ops::DeletePolicy::default().assert_refresh
}

fn default_trash_inspect_every() -> Duration {
    hoard_meta::MetaConfig::default().trash_inspect_every
}

fn default_compaction_threshold() -> f64 {
    hoard_meta::MetaConfig::default().compaction_threshold
}

fn default_high_water() -> f64 {
    0.9
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailureDomain {
    /// At most `m` members of a volume per node.
    #[default]
    Node,
    /// Distinct disks only (single-node cells).
    Disk,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendSection {
    #[serde(deserialize_with = "de_addr")]
    pub listen: SocketAddr,
    /// Meta's URL, e.g. `http://10.0.0.1:7701`.
    pub meta: String,
    #[serde(default = "default_open_volumes")]
    pub open_volumes: usize,
    /// Share of stored blocks read back later and checked (0 to 1).
    #[serde(default = "default_watch_share")]
    pub watch_share: f64,
    /// When the read-back watcher checks a block again, e.g. ["1m", "1h", "1d", "1w"].
    #[serde(default = "default_watch_delays", deserialize_with = "de_durations")]
    pub watch_delays: Vec<Duration>,
    /// Append fragments to volume servers by the raw protocol (true) or by gRPC (false).
    #[serde(default = "default_raw_appends")]
    pub raw_appends: bool,
}

fn default_raw_appends() -> bool {
    true
}

fn default_watch_share() -> f64 {
    0.01
}

fn default_watch_delays() -> Vec<Duration> {
    ["1m", "1h", "1d", "1w"]
        .iter()
        .map(|d| humantime::parse_duration(d).expect("valid"))
        .collect()
}

fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSection {
    #[serde(deserialize_with = "de_addr")]
    pub listen: SocketAddr,
    /// The address other roles reach this server at; the listen address when absent.
    #[serde(default, deserialize_with = "de_opt_addr")]
    pub advertise: Option<SocketAddr>,
    pub meta: String,
    pub disks: Vec<PathBuf>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub heartbeat: Option<Duration>,
    /// Capacity to report per disk; the filesystem's size when absent.
    pub disk_capacity: Option<Size>,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    /// How long superseded extents stay in a disk's trash before deletion.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub trash_grace: Option<Duration>,
    /// A disk whose latency probe (a 4 KiB synced write, once a second) takes longer, as the median
    /// of the last ten, is slow and gets no new members; 500ms when absent.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub slow_disk: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(deserialize_with = "de_addr")]
    pub listen: SocketAddr,
    /// The admin token file (`hoard admin-token` makes tokens and their lines): every endpoint but the
    /// probes, `/metrics` and the API description needs one of its tokens.
    pub tokens: PathBuf,
    /// Where `hoard admin backup NAME` puts backups of the metadata tier (the process running meta):
    /// `DIR/NAME`. Without it backups are refused.
    pub backup_dir: Option<PathBuf>,
}

fn default_geometry() -> Geometry {
    Geometry::DEFAULT
}
fn default_extent_size() -> Size {
    Size(1 << 30)
}
fn default_lease() -> Duration {
    Duration::from_secs(30)
}
fn default_grace() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_open_volumes() -> usize {
    4
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// Parses and validates a config file. Errors are one line naming the file, the line and the key.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config {}: cannot read: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let cfg = Self::parse_unchecked(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as written, before [`Config::problems`] are looked for.
    fn parse_unchecked(text: &str) -> Result<Config, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => format!("line {}: {msg}", line_of(text, span.start)),
                None => msg,
            }
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Every value that parses but makes no sense: missing roles and keys, zero or absurd durations
    /// and sizes. Each problem names its key and the allowed range.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.meta.is_none()
            && self.frontend.is_none()
            && self.volume.is_none()
            && self.repair.is_none()
        {
            p.push(
                "no role configured: add a [meta], [frontend], [volume] or [repair] section".into(),
            );
        }
        if let Some(r) = &self.repair
            && let Err(e) = check_url("repair.meta", &r.meta)
        {
            p.push(e);
        }
        if let Some(m) = &self.meta {
            size_within(
                &mut p,
                "meta.extent_size",
                m.extent_size,
                1 << 20,
                hoard_types::MAX_EXTENT_CAPACITY,
            );
            within(
                &mut p,
                "meta.lease",
                m.lease,
                Duration::from_secs(1),
                Duration::from_secs(3600),
            );
            within(
                &mut p,
                "meta.heartbeat_grace",
                m.heartbeat_grace,
                Duration::from_secs(1),
                Duration::from_secs(7 * 86_400),
            );
            // A window of 0 would let a delete race a client that was just told a block is there.
            within(
                &mut p,
                "meta.reference_window",
                m.reference_window,
                Duration::from_secs(1),
                Duration::from_secs(365 * 86_400),
            );
            within(
                &mut p,
                "meta.assert_refresh",
                m.assert_refresh,
                Duration::from_millis(1),
                Duration::from_secs(86_400),
            );
            within(
                &mut p,
                "meta.delete_grace",
                m.delete_grace,
                Duration::from_secs(1),
                Duration::from_secs(365 * 86_400),
            );
            within(
                &mut p,
                "meta.trash_inspect_every",
                m.trash_inspect_every,
                Duration::from_millis(100),
                Duration::from_secs(86_400),
            );
            if !(m.compaction_threshold > 0.0 && m.compaction_threshold <= 1.0) {
                p.push(format!(
                    "meta.compaction_threshold {} must be above 0 and at most 1",
                    m.compaction_threshold
                ));
            }
            if !(0.1..=1.0).contains(&m.high_water) {
                p.push(format!(
                    "meta.high_water {} must be between 0.1 and 1.0",
                    m.high_water
                ));
            }
        }
        if let Some(v) = &self.volume {
            if v.disks.is_empty() {
                p.push("volume.disks is empty: list at least one disk directory".into());
            }
            if self.node.id.as_deref().unwrap_or("").is_empty() {
                p.push("node.id is missing: the volume role needs a node id".into());
            }
            if let Err(e) = check_url("volume.meta", &v.meta) {
                p.push(e);
            }
            if let Some(h) = v.heartbeat {
                within(
                    &mut p,
                    "volume.heartbeat",
                    h,
                    Duration::from_millis(100),
                    Duration::from_secs(300),
                );
            }
            if let Some(t) = v.trash_grace {
                within(
                    &mut p,
                    "volume.trash_grace",
                    t,
                    // Short only in tests: nothing is unlinked before meta cleared it.
                    Duration::from_secs(1),
                    Duration::from_secs(365 * 86_400),
                );
            }
            if let Some(t) = v.slow_disk {
                within(
                    &mut p,
                    "volume.slow_disk",
                    t,
                    Duration::from_millis(5),
                    Duration::from_secs(600),
                );
            }
            if let Some(c) = v.disk_capacity {
                size_within(&mut p, "volume.disk_capacity", c, 1 << 20, u64::MAX);
            }
        }
        if !self.node.insecure {
            let listens = [
                self.meta.as_ref().map(|m| ("meta.listen", m.listen)),
                self.frontend
                    .as_ref()
                    .map(|f| ("frontend.listen", f.listen)),
                self.volume.as_ref().map(|v| ("volume.listen", v.listen)),
                self.admin.as_ref().map(|a| ("admin.listen", a.listen)),
            ];
            for (key, addr) in listens.into_iter().flatten() {
                if !addr.ip().is_loopback() {
                    p.push(format!(
                        "{key} {addr} is not a loopback address, and Hoard's ports have no TLS yet: \
                         anyone who reaches it can use it. Listen on loopback, or set [node] \
                         insecure = true to serve in the clear on a network only the cell's hosts reach"
                    ));
                }
            }
        }
        if let Some(f) = &self.frontend {
            if let Err(e) = check_url("frontend.meta", &f.meta) {
                p.push(e);
            }
            if !(1..=64).contains(&f.open_volumes) {
                p.push(format!(
                    "frontend.open_volumes {} must be 1 to 64",
                    f.open_volumes
                ));
            }
            if !(0.0..=1.0).contains(&f.watch_share) {
                p.push(format!(
                    "frontend.watch_share {} must be between 0 and 1",
                    f.watch_share
                ));
            }
            for d in &f.watch_delays {
                within(
                    &mut p,
                    "frontend.watch_delays",
                    *d,
                    Duration::from_secs(1),
                    Duration::from_secs(365 * 86_400),
                );
            }
        }
        p
    }
}

/// Adds a problem unless `d` lies in `[min, max]`.
fn within(problems: &mut Vec<String>, key: &str, d: Duration, min: Duration, max: Duration) {
    if d < min || d > max {
        problems.push(format!(
            "{key} {} must be between {} and {}",
            humantime::format_duration(d),
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
}

/// Adds a problem unless `s` lies in `[min, max]` bytes.
fn size_within(problems: &mut Vec<String>, key: &str, s: Size, min: u64, max: u64) {
    if s.0 < min || s.0 > max {
        problems.push(format!(
            "{key} {s} must be between {} and {}",
            Size(min),
            Size(max)
        ));
    }
}

/// The keys each section takes, for naming unknown ones.
const KNOWN: &[(&str, &[&str])] = &[
    ("node", &["id", "insecure"]),
    (
        "meta",
        &[
            "listen",
            "data_dir",
            "ec",
            "extent_size",
            "lease",
            "heartbeat_grace",
            "failure_domain",
            "high_water",
            "delete_grace",
            "reference_window",
            "assert_refresh",
            "compaction_threshold",
            "trash_inspect_every",
        ],
    ),
    (
        "frontend",
        &[
            "listen",
            "meta",
            "open_volumes",
            "watch_share",
            "watch_delays",
            "raw_appends",
        ],
    ),
    (
        "volume",
        &[
            "listen",
            "advertise",
            "meta",
            "disks",
            "heartbeat",
            "disk_capacity",
            "labels",
            "trash_grace",
            "slow_disk",
        ],
    ),
    ("repair", &["meta"]),
    ("admin", &["listen", "tokens", "backup_dir"]),
];

fn section_error<T: serde::de::DeserializeOwned>(text: &str, name: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table.get(name)?;
    // Deserialize `{ name: T }` from the original text, so that the span points into it.
    #[derive(Deserialize)]
    struct One<T> {
        #[serde(rename = "section", default = "none")]
        _section: Option<T>,
    }
    fn none<T>() -> Option<T> {
        None
    }
    let renamed = rename_section(text, name);
    match toml::from_str::<One<T>>(&renamed) {
        Ok(_) => None,
        Err(e) => {
            let msg = e.message().trim().replace('\n', " ");
            Some(match e.span() {
                Some(span) => {
                    let line = line_of(&renamed, span.start);
                    // Name the key on that line, when the message does not.
                    let key = renamed
                        .lines()
                        .nth(line - 1)
                        .and_then(|l| l.split_once('='))
                        .map(|(k, _)| k.trim().to_string())
                        .filter(|k| !k.is_empty() && !msg.contains(k.as_str()));
                    match key {
                        Some(k) => format!("line {line}: {name}.{k}: {msg}"),
                        None => format!("line {line}: [{name}] {msg}"),
                    }
                }
                None => format!("[{name}] {msg}"),
            })
        }
    }
}

/// The text with only section `name` kept (renamed to `section`) and every other section blanked line
/// for line, so that line numbers stay the same.
fn rename_section(text: &str, name: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut keep = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            let header = t.trim_matches(|c| c == '[' || c == ']').trim();
            keep = header == name;
            out.push_str(if keep { "[section]" } else { "" });
        } else if keep {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

impl Config {
    /// Every problem of a config text, one line each: unknown sections and keys (with their lines), and
    /// the first bad value of each section.
    pub fn check(text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = toml::from_str::<toml::Table>(text) {
            let msg = e.message().trim().replace('\n', " ");
            return vec![match e.span() {
                Some(span) => format!("line {}: {msg}", line_of(text, span.start)),
                None => msg,
            }];
        }
        let mut section = String::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if t.starts_with('[') && t.ends_with(']') {
                section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
                if !KNOWN.iter().any(|(s, _)| *s == section) {
                    problems.push(format!(
                        "line {}: unknown section [{section}]; sections are {}",
                        i + 1,
                        KNOWN
                            .iter()
                            .map(|(s, _)| format!("[{s}]"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                continue;
            }
            let Some((key, _)) = t.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if let Some((_, keys)) = KNOWN.iter().find(|(s, _)| *s == section)
                && !keys.contains(&key)
            {
                problems.push(format!(
                    "line {}: unknown key `{key}` in [{section}]; it takes {}",
                    i + 1,
                    keys.join(", ")
                ));
            }
        }
        problems.extend(section_error::<NodeSection>(text, "node"));
        problems.extend(section_error::<MetaSection>(text, "meta"));
        problems.extend(section_error::<FrontendSection>(text, "frontend"));
        problems.extend(section_error::<VolumeSection>(text, "volume"));
        problems.extend(section_error::<RepairSection>(text, "repair"));
        problems.extend(section_error::<AdminSection>(text, "admin"));
        if problems.is_empty() {
            match Config::parse_unchecked(text) {
                Ok(cfg) => problems.extend(cfg.problems()),
                Err(e) => problems.push(e),
            }
        }
        // One report per line is enough: the unknown-key pass and a section's own error may agree.
        let mut seen = std::collections::HashSet::new();
        problems.retain(|p| {
            let line = p.split(':').next().unwrap_or("").to_string();
            !line.starts_with("line ") || seen.insert(line)
        });
        problems
    }
}

fn check_url(key: &str, url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "{key} {url:?} is not a URL: expected http://HOST:PORT"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_absurd_values_are_named_and_refused() {
        let text = "[node]\nid = \"v\"\n[meta]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"/m\"\nheartbeat_grace = \"0s\"\nextent_size = \"4TiB\"\nlease = \"0s\"\n[volume]\nlisten = \"127.0.0.1:0\"\nmeta = \"http://127.0.0.1:1\"\ndisks = [\"/d\"]\nheartbeat = \"0s\"\ntrash_grace = \"0s\"\n";
        let problems = Config::check(text);
        for key in [
            "meta.heartbeat_grace",
            "meta.extent_size",
            "meta.lease",
            "volume.heartbeat",
            "volume.trash_grace",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(key)),
                "{key} not named: {problems:?}"
            );
        }
        let e = Config::parse(text).unwrap_err();
        assert!(e.contains("volume.trash_grace") && !e.contains('\n'), "{e}");
        let fine = text
            .replace("\"0s\"", "\"2s\"")
            .replace("4TiB", "1GiB")
            .replace("trash_grace = \"2s\"", "trash_grace = \"1d\"");
        assert!(
            Config::check(&fine).is_empty(),
            "{:?}",
            Config::check(&fine)
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("4MiB".parse::<Size>().unwrap(), Size(4 << 20));
        assert_eq!("1 GiB".parse::<Size>().unwrap(), Size(1 << 30));
        assert_eq!("512".parse::<Size>().unwrap(), Size(512));
        assert!("4 parsecs".parse::<Size>().is_err());
    }

    #[test]
    fn full_config_parses() {
        let cfg = Config::parse(
            r#"
            [node]
            id = "vol-1"
            [meta]
            listen = "127.0.0.1:7701"
            data_dir = "/tmp/meta"
            ec = "4+2"
            extent_size = "64MiB"
            lease = "10s"
            [volume]
            listen = "127.0.0.1:7702"
            meta = "http://127.0.0.1:7701"
            disks = ["/tmp/d1"]
            labels = { zone = "a" }
            "#,
        )
        .unwrap();
        assert_eq!(cfg.meta.unwrap().ec, Geometry::new(4, 2).unwrap());
        assert_eq!(cfg.volume.unwrap().labels["zone"], "a");
    }

    #[test]
    fn check_names_every_bad_key_with_its_line() {
        let text = "[meta]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/x\"\nlistne = 3\nextent_size = \"lots\"\n[frontend]\nlisten = \"nope\"\nmeta = \"http://x:1\"\nopen_volums = 2\n[bogus]\nx = 1\n";
        let p = Config::check(text);
        let joined = p.join("\n");
        assert!(
            joined.contains("line 4: unknown key `listne` in [meta]"),
            "{joined}"
        );
        assert!(
            joined.contains("line 9: unknown key `open_volums` in [frontend]"),
            "{joined}"
        );
        assert!(
            joined.contains("line 10: unknown section [bogus]"),
            "{joined}"
        );
        assert!(
            joined.contains("line 7") && joined.contains("nope"),
            "{joined}"
        );
        assert!(p.iter().all(|l| !l.contains('\n')));
        // A broken value of a known key, alone.
        let p = Config::check(
            "[meta]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/x\"\nextent_size = \"lots\"\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("line 4:") && p[0].contains("lots"),
            "{p:?}"
        );
        assert!(Config::check(include_str!("../../../deploy/config/meta.toml")).is_empty());
    }

    #[test]
    fn deploy_examples_are_valid() {
        for text in [
            include_str!("../../../deploy/config/meta.toml"),
            include_str!("../../../deploy/config/volume.toml"),
            include_str!("../../../deploy/config/frontend.toml"),
            include_str!("../../../deploy/config/repair.toml"),
        ] {
            Config::parse(text).unwrap();
        }
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = Config::parse("[meta]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/x\"\nbogus = 1\n")
            .unwrap_err();
        assert!(e.contains("line 4") && e.contains("bogus"), "{e}");
        let e = Config::parse("[meta]\nlisten = \"nope\"\ndata_dir = \"/x\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("nope"), "{e}");
        let e = Config::parse("[meta]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.contains("data_dir"), "{e}");
        let e = Config::parse(
            "[volume]\nlisten = \"127.0.0.1:1\"\nmeta = \"http://x:1\"\ndisks = [\"/d\"]\n",
        )
        .unwrap_err();
        assert!(e.contains("node.id"), "{e}");
        assert!(!e.contains('\n'));
    }
}
