//! Deleting blocks: `hoard delete-token`, `hoard delete` and `hoard undelete`.
//!
//! A deleter takes a token before it reads the references that say a block is unused, and deletes
//! with that token: meta keeps every block a client was told is present within the reference window
//! before the token, so a reference committed after the read cannot point at a deleted block.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use hoard_proto::v1::{DeleteResult, UndeleteResult};
use hoard_types::BlockHash;
use serde::Serialize;

use crate::admin_cli::render::table_of;
use crate::cli::{EndpointArg, answer, connect, rfc3339_ms};

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Blocks to delete.
    hashes: Vec<String>,
    /// A file of hashes, one per line (a manifest written by `upload`).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// The token from `hoard delete-token`, taken before the references were read. Without it, one
    /// is taken now: right when nothing can come to reference these blocks any more.
    #[arg(long)]
    token: Option<u64>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ep: EndpointArg,
}

#[derive(clap::Args, Debug)]
pub struct UndeleteArgs {
    hashes: Vec<String>,
    #[arg(long)]
    manifest: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ep: EndpointArg,
}

#[derive(Serialize)]
struct Row {
    hash: String,
    result: &'static str,
}

/// The hashes named on the command line and in the manifest, checked, in order, without repeats.
fn hashes_of(args: &[String], manifest: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |h: &str, at: &dyn Fn() -> String| -> anyhow::Result<()> {
        let h: BlockHash = h.parse().map_err(|e| anyhow!("{}: {e}", at()))?;
        let h = h.to_hex();
        if !out.contains(&h) {
            out.push(h);
        }
        Ok(())
    };
    for h in args {
        push(h, &|| "argument".to_string())?;
    }
    if let Some(m) = manifest {
        let text = std::fs::read_to_string(m)
            .with_context(|| format!("cannot read manifest {}", m.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() {
                push(line, &|| format!("manifest {} line {}", m.display(), i + 1))?;
            }
        }
    }
    if out.is_empty() {
        bail!("no hashes: name blocks, or a manifest with --manifest");
    }
    Ok(out)
}

fn delete_name(r: DeleteResult) -> &'static str {
    match r {
        DeleteResult::Deleted => "deleted",
        DeleteResult::Kept => "kept",
        DeleteResult::AlreadyDeleted => "already deleted",
        DeleteResult::NotFound => "not found",
        DeleteResult::Unspecified => "unknown",
    }
}

fn undelete_name(r: UndeleteResult) -> &'static str {
    match r {
        UndeleteResult::Restored => "restored",
        UndeleteResult::NotDeleted => "not deleted",
        UndeleteResult::NotFound => "not found",
        UndeleteResult::Unspecified => "unknown",
    }
}

/// Prints the per-hash results (a table, or JSON) and a summary on stderr; exit status 1 when any
/// hash was not done (`bad` says which results count so).
fn report(rows: &[Row], json: bool, bad: &[&str]) -> anyhow::Result<ExitCode> {
    if json {
        outln!("{}", serde_json::to_string_pretty(rows)?)?;
    } else {
        out!(
            "{}",
            table_of(&["HASH", "RESULT"], rows, |r| vec![
                r.hash.clone(),
                r.result.to_string()
            ])
        )?;
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for r in rows {
        match counts.iter_mut().find(|(k, _)| *k == r.result) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.result, 1)),
        }
    }
    let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    eprintln!("hoard: {}", summary.join(", "));
    Ok(if rows.iter().any(|r| bad.contains(&r.result)) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Sends `hashes` in requests of 10,000 and pairs each with its result, named by `name`.
async fn per_hash<R, F, Fut>(
    hashes: &[String],
    name: fn(R) -> &'static str,
    mut call: F,
) -> anyhow::Result<Vec<Row>>
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<R>, hoard_client::ClientError>>,
{
    let mut rows = Vec::with_capacity(hashes.len());
    for chunk in hashes.chunks(10_000) {
        let results = call(chunk.to_vec()).await.map_err(answer)?;
        if results.len() != chunk.len() {
            bail!(
                "the cell answered {} results for {} hashes",
                results.len(),
                chunk.len()
            );
        }
        rows.extend(chunk.iter().zip(results).map(|(h, r)| Row {
            hash: h.clone(),
            result: name(r),
        }));
    }
    Ok(rows)
}

pub async fn delete_token(ep: &EndpointArg, json: bool) -> anyhow::Result<ExitCode> {
    let t = connect(ep).await?.delete_token().await.map_err(answer)?;
    if json {
        outln!(
            "{}",
            serde_json::json!({
                "token": t.token,
                "reference_window_ms": t.reference_window_ms,
                "delete_grace_ms": t.delete_grace_ms,
            })
        )?;
    } else {
        outln!("{}", t.token)?;
        eprintln!(
            "hoard: token of {}; blocks a client was told are present within {} before it are kept",
            rfc3339_ms(t.token),
            humantime::format_duration(std::time::Duration::from_millis(t.reference_window_ms))
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(a: DeleteArgs) -> anyhow::Result<ExitCode> {
    let hashes = hashes_of(&a.hashes, a.manifest.as_deref())?;
    let client = connect(&a.ep).await?;
    let token = match a.token {
        Some(t) => t,
        None => client.delete_token().await.map_err(answer)?.token,
    };
    let client = &client;
    let rows = per_hash(&hashes, delete_name, |chunk| async move {
        client.delete(&chunk, token).await
    })
    .await?;
    report(&rows, a.json, &["kept", "not found", "unknown"])
}

pub async fn undelete(a: UndeleteArgs) -> anyhow::Result<ExitCode> {
    let hashes = hashes_of(&a.hashes, a.manifest.as_deref())?;
    let client = connect(&a.ep).await?;
    let client = &client;
    let rows = per_hash(&hashes, undelete_name, |chunk| async move {
        client.undelete(&chunk).await
    })
    .await?;
    report(&rows, a.json, &["not found", "unknown"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_come_from_arguments_and_manifests_checked_and_once() {
        let a = BlockHash::of(b"a").to_hex();
        let b = BlockHash::of(b"b").to_hex();
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        std::fs::write(&m, format!("{b}\n\n{a}\n")).unwrap();
        assert_eq!(
            hashes_of(std::slice::from_ref(&a), Some(&m)).unwrap(),
            vec![a.clone(), b]
        );
        std::fs::write(&m, format!("{a}\nnot-a-hash\n")).unwrap();
        let e = hashes_of(&[], Some(&m)).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(hashes_of(&[], None).is_err());
    }
}
