//! Who may use the admin API: bearer tokens with an access level, kept hashed in a file that every role's
//! `[admin] tokens` names. `viewer` tokens may read (GET); `operator` tokens may also change the cell.
//! `/healthz`, `/readyz`, `/metrics`, the status page's own HTML and the API description answer anyone;
//! every other path needs `Authorization: Bearer TOKEN`. A token is never stored, only its BLAKE3 hash;
//! the file is read again when it changes, so adding or revoking a token needs no restart.
//!
//! The file holds one token per line, `ACCESS NAME blake3:HEX`; `#` starts a comment. `hoard admin-token`
//! makes a token and appends its line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use crate::api::Failure;

/// What a token lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read the cell's state.
    Viewer,
    /// Read and change it: drain, pause, throttle, start jobs, back up.
    Operator,
}

impl std::str::FromStr for Access {
    type Err = String;
    fn from_str(s: &str) -> Result<Access, String> {
        match s {
            "viewer" => Ok(Access::Viewer),
            "operator" => Ok(Access::Operator),
            other => Err(format!(
                "unknown access {other:?}: `viewer` (read) or `operator` (read and change)"
            )),
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Viewer => "viewer",
            Access::Operator => "operator",
        })
    }
}

/// A new random token: `PREFIX_` and 64 hex digits (256 bits from the operating system's generator).
pub fn new_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}_{}", hex::encode(bytes))
}

/// What a token file keeps of a token: `blake3:` and the hex of its hash.
pub fn token_hash(token: &str) -> String {
    format!("blake3:{}", blake3::hash(token.as_bytes()).to_hex())
}

/// The line of a token file that admits `token`.
pub fn token_line(access: Access, name: &str, token: &str) -> String {
    format!("{access} {name} {}", token_hash(token))
}

/// A token file's entries by hash: (access, name).
fn parse(path: &Path, text: &str) -> Result<HashMap<String, (Access, String)>, String> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [access, name, hash] = fields[..] else {
            return Err(format!("{}: expected `ACCESS NAME blake3:HEX`", at()));
        };
        let access: Access = access.parse().map_err(|e| format!("{}: {e}", at()))?;
        let hex = hash
            .strip_prefix("blake3:")
            .ok_or_else(|| format!("{}: the hash must start with `blake3:`", at()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{}: the hash must be 64 hex digits", at()));
        }
        out.insert(
            format!("blake3:{}", hex.to_ascii_lowercase()),
            (access, name.to_string()),
        );
    }
    Ok(out)
}

/// How often the file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(1);

struct Loaded {
    tokens: HashMap<String, (Access, String)>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// The admin tokens of one process, from its token file.
pub struct AdminTokens {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl AdminTokens {
    /// Reads `path`; an unreadable or malformed file is an error (the role does not start).
    pub fn load(path: &Path) -> Result<AdminTokens, String> {
        let (tokens, modified) = read(path)?;
        Ok(AdminTokens {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                tokens,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    /// The access and name of `token`, if the file (as it is now, give or take a second) admits it.
    pub fn check(&self, token: &str) -> Option<(Access, String)> {
        let mut l = self.loaded.lock();
        if l.checked.elapsed() >= RECHECK {
            l.checked = Instant::now();
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != l.modified {
                // A file that went bad keeps the last good list, and says so.
                match read(&self.path) {
                    Ok((tokens, modified)) => {
                        tracing::info!(file = %self.path.display(), tokens = tokens.len(), "admin tokens reloaded");
                        l.tokens = tokens;
                        l.modified = modified;
                    }
                    Err(e) => tracing::warn!("admin tokens not reloaded: {e}"),
                }
            }
        }
        l.tokens.get(&token_hash(token)).cloned()
    }
}

/// Token hash -> (access, name).
type Tokens = HashMap<String, (Access, String)>;

fn read(path: &Path) -> Result<(Tokens, Option<SystemTime>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("admin tokens {}: cannot read: {e}", path.display()))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((parse(path, &text)?, modified))
}

/// Paths anyone may GET: probes, metrics, the status page's HTML (it asks for a token itself) and
/// the API description.
fn open(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/" | "/api/v1/openapi.json"
    )
}

fn refused(status: StatusCode, code: &str, why: &'static str, message: String) -> Response {
    metrics::counter!("hoard_admin_refused_total", "why" => why).increment(1);
    let mut f = Failure::invalid(message);
    f.status = status;
    f.error.code = code.to_string();
    let mut r = f.into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"hoard-admin\""),
        );
    }
    r
}

/// The middleware: lets a request through when its path is open or its token allows its method.
pub async fn require(State(tokens): State<Arc<AdminTokens>>, req: Request, next: Next) -> Response {
    let reads = req.method() == Method::GET || req.method() == Method::HEAD;
    if reads && open(req.uri().path()) {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = bearer else {
        return refused(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "no_token",
            "this endpoint needs an admin token: send `Authorization: Bearer TOKEN` \
             (`hoard admin` sends HOARD_ADMIN_TOKEN)"
                .into(),
        );
    };
    match tokens.check(token) {
        None => refused(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "unknown_token",
            "the admin token is not known here (revoked, mistyped, or from another cell)".into(),
        ),
        Some((Access::Viewer, name)) if !reads => refused(
            StatusCode::FORBIDDEN,
            "forbidden",
            "viewer",
            format!(
                "token {name:?} is a viewer token: it may read, but {} {} changes the cell and needs an operator token",
                req.method(),
                req.uri().path()
            ),
        ),
        Some(_) => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_admits_its_tokens_by_hash_and_rereads_itself_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-tokens");
        let op = new_token("hoardadm");
        let view = new_token("hoardadm");
        assert_ne!(op, view);
        std::fs::write(
            &path,
            format!(
                "# comment\n{}\n\n{}  # trailing comment\n",
                token_line(Access::Operator, "alice", &op),
                token_line(Access::Viewer, "grafana", &view)
            ),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&op), "the file holds the token itself");
        let tokens = AdminTokens::load(&path).unwrap();
        assert_eq!(tokens.check(&op), Some((Access::Operator, "alice".into())));
        assert_eq!(
            tokens.check(&view),
            Some((Access::Viewer, "grafana".into()))
        );
        assert_eq!(tokens.check("hoardadm_00"), None);
        assert_eq!(tokens.check(""), None);

        // Revoke alice: within a second or so the file's new list holds.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, token_line(Access::Viewer, "grafana", &view)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while tokens.check(&op).is_some() {
            assert!(Instant::now() < deadline, "a revoked token still admitted");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(tokens.check(&view).is_some());
    }

    #[test]
    fn a_malformed_token_file_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        for (text, says) in [
            ("admin x blake3:00", "unknown access \"admin\""),
            ("operator x", "expected `ACCESS NAME blake3:HEX`"),
            ("viewer x sha256:00", "must start with `blake3:`"),
            ("viewer x blake3:abc", "64 hex digits"),
        ] {
            std::fs::write(&path, format!("# first\n{text}\n")).unwrap();
            let e = AdminTokens::load(&path).err().unwrap();
            assert!(e.contains("line 2") && e.contains(says), "{text}: {e}");
        }
        let e = AdminTokens::load(&dir.path().join("none")).err().unwrap();
        assert!(e.contains("cannot read"), "{e}");
    }
}
