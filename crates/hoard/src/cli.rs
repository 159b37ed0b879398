//! Client commands: put, get, stat, missing, upload, download.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hoard_client::{Client, ClientError};
use hoard_types::{BlockHash, MAX_BLOCK_LEN};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::human_bytes;

/// A time in milliseconds since the Unix epoch as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(clap::Args, Debug, Clone)]
pub struct EndpointArg {
    /// The cell's frontends: a URL, or a comma list of them (calls are spread over them and fail
    /// over between them).
    #[arg(long, env = "HOARD_ENDPOINT", default_value = "http://127.0.0.1:7700")]
    pub endpoint: String,
}

pub(crate) async fn connect(ep: &EndpointArg) -> anyhow::Result<Client> {
    Client::connect(&ep.endpoint)
        .await
        .map_err(|e| anyhow!("{e}"))
}

/// A cell's answer as one line: its gRPC code and message.
pub(crate) fn answer(e: ClientError) -> anyhow::Error {
    match &e {
        ClientError::Status(s) => anyhow!("{:?}: {}", s.code(), s.message()),
        _ => anyhow!("{e}"),
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

pub async fn put(ep: &EndpointArg, file: &str, expect: Option<&str>) -> anyhow::Result<ExitCode> {
    let data = if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(MAX_BLOCK_LEN + 1)
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        buf
    } else {
        let meta = std::fs::metadata(file).with_context(|| format!("cannot read {file}"))?;
        if meta.len() > MAX_BLOCK_LEN {
            bail!(
                "{file} is {} bytes; a block holds at most {MAX_BLOCK_LEN} bytes (use `hoard upload` for larger files)",
                meta.len()
            );
        }
        std::fs::read(file).with_context(|| format!("cannot read {file}"))?
    };
    if data.len() as u64 > MAX_BLOCK_LEN {
        bail!(
            "stdin holds more than {MAX_BLOCK_LEN} bytes; a block holds at most 4 MiB (use `hoard upload`)"
        );
    }
    if data.is_empty() {
        bail!("{file} is empty; a block holds 1 to {MAX_BLOCK_LEN} bytes");
    }
    let expected = match expect {
        Some(h) => Some(
            h.parse::<BlockHash>()
                .map_err(|e| anyhow!("--expect: {e}"))?,
        ),
        None => None,
    };
    let client = connect(ep).await?;
    let put = client
        .put_checked(Bytes::from(data), expected)
        .await
        .map_err(answer)?;
    outln!("{}", put.hash)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `data` to `out` atomically (temporary file, then rename), or to stdout.
fn write_output(out: Option<&Path>, chunks: &[Bytes]) -> anyhow::Result<()> {
    match out {
        None => {
            let mut so = std::io::stdout().lock();
            for c in chunks {
                so.write_all(c)?;
            }
            so.flush()?;
        }
        Some(p) => {
            let tmp = p.with_extension("hoard-partial");
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            for c in chunks {
                f.write_all(c)?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, p).with_context(|| format!("cannot write {}", p.display()))?;
        }
    }
    Ok(())
}

pub async fn get(
    ep: &EndpointArg,
    hash: &str,
    out: Option<&Path>,
    offset: u64,
    length: u64,
) -> anyhow::Result<ExitCode> {
    let client = connect(ep).await?;
    let data = client.get_raw(hash, offset, length).await.map_err(answer)?;
    write_output(out, &[data])?;
    Ok(ExitCode::SUCCESS)
}

pub async fn stat(ep: &EndpointArg, hash: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = connect(ep).await?;
    let s = client.stat(hash).await.map_err(answer)?;
    if json {
        outln!(
            "{}",
            serde_json::json!({
                "hash": s.hash, "size": s.size, "volume": s.volume, "offset": s.offset,
                "created_unix_ms": s.created_unix_ms, "volume_state": s.volume_state,
                "geometry": s.geometry,
            })
        )?;
    } else {
        outln!("hash      {}", s.hash)?;
        outln!("size      {} ({} bytes)", human_bytes(s.size), s.size)?;
        outln!(
            "volume    {} ({}, RS {})",
            s.volume,
            s.volume_state,
            s.geometry
        )?;
        outln!("offset    {}", s.offset)?;
        outln!("created   {}", rfc3339_ms(s.created_unix_ms))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn missing(ep: &EndpointArg, hashes: &[String]) -> anyhow::Result<ExitCode> {
    for h in hashes {
        h.parse::<BlockHash>().map_err(|e| anyhow!("{e}"))?;
    }
    let client = connect(ep).await?;
    for m in client.find_missing(hashes).await.map_err(answer)? {
        outln!("{m}")?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn upload(
    ep: &EndpointArg,
    file: &Path,
    out: Option<&Path>,
    concurrency: usize,
) -> anyhow::Result<ExitCode> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    if len == 0 {
        bail!("{} is empty: nothing to upload", file.display());
    }
    let client = connect(ep).await?;
    let pb = progress(len, "upload");
    let blocks = len.div_ceil(MAX_BLOCK_LEN);
    let path = file.to_path_buf();
    // Read, hash and store blocks a few at a time; only what is in flight is in memory.
    let hashes: Vec<BlockHash> = futures::stream::iter(0..blocks)
        .map(|i| {
            let (client, path, pb) = (client.clone(), path.clone(), pb.clone());
            async move {
                let data = tokio::task::spawn_blocking(move || read_block(&path, i)).await??;
                let n = data.len() as u64;
                let hash = BlockHash::of(&data);
                // Ask first: a block the cell holds is not sent again.
                let missing = client
                    .find_missing(&[hash.to_hex()])
                    .await
                    .map_err(answer)?;
                if !missing.is_empty() {
                    client.put_checked(data, Some(hash)).await.map_err(answer)?;
                }
                pb.inc(n);
                Ok::<_, anyhow::Error>(hash)
            }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    pb.finish_and_clear();
    let manifest: String = hashes.iter().map(|h| format!("{h}\n")).collect();
    match out {
        Some(p) => write_output(Some(p), &[Bytes::from(manifest)])?,
        None => out!("{manifest}")?,
    }
    Ok(ExitCode::SUCCESS)
}

fn read_block(path: &Path, index: u64) -> anyhow::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let len = f.metadata()?.len();
    let start = index * MAX_BLOCK_LEN;
    let n = (len - start).min(MAX_BLOCK_LEN) as usize;
    let mut buf = vec![0u8; n];
    f.read_exact_at(&mut buf, start)?;
    Ok(Bytes::from(buf))
}

pub async fn download(
    ep: &EndpointArg,
    manifest: &Path,
    out: Option<&Path>,
    concurrency: usize,
    direct: bool,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read manifest {}", manifest.display()))?;
    let mut hashes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let h: BlockHash = line
            .parse()
            .map_err(|e| anyhow!("manifest {} line {}: {e}", manifest.display(), i + 1))?;
        hashes.push(h);
    }
    let client = connect(ep).await?;
    let pb = progress(hashes.len() as u64 * MAX_BLOCK_LEN, "download");
    let mut stream = futures::stream::iter(hashes)
        .map(|h| {
            let client = client.clone();
            async move {
                if direct {
                    client.get_direct_parts(&h).await.map_err(answer)
                } else {
                    client.get(&h).await.map(|b| vec![b]).map_err(answer)
                }
            }
        })
        .buffered(concurrency.max(1));
    // Stream to the output in order; to a file through a temporary name, renamed when complete.
    let tmp = out.map(|p| p.with_extension("hoard-partial"));
    let mut sink: Box<dyn Write> = match &tmp {
        Some(t) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(t).with_context(|| format!("cannot create {}", t.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    while let Some(parts) = stream.next().await {
        for part in parts? {
            sink.write_all(&part)?;
            pb.inc(part.len() as u64);
        }
    }
    sink.flush()?;
    drop(sink);
    pb.finish_and_clear();
    if let (Some(t), Some(p)) = (tmp, out) {
        std::fs::File::open(&t)?.sync_all()?;
        std::fs::rename(&t, p).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
