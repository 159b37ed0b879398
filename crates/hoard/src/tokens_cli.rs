//! `hoard admin-token`: makes an admin API token and adds its hashed line to a token file (`[admin]
//! tokens`). The token is printed once and stored nowhere else; the roles pick the new line up within
//! a second or two, without a restart. Revoking a token is deleting its line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use hoard_admin::auth::{self, Access};

#[derive(clap::Args, Debug)]
pub struct AdminTokenArgs {
    /// Who or what holds the token (one word: `alice`, `grafana`); shown when it is refused.
    pub name: String,
    /// `viewer` reads the cell's state; `operator` may also change it.
    #[arg(long, default_value = "viewer")]
    pub access: Access,
    /// The token file to add the token's line to (made, mode 0600, if missing). Without it, the line
    /// is printed on stderr for you to add.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

pub fn run(args: &AdminTokenArgs) -> anyhow::Result<ExitCode> {
    if args.name.is_empty() || args.name.contains(char::is_whitespace) || args.name.contains('#') {
        return Err(anyhow!(
            "token name {:?} must be one word without `#`",
            args.name
        ));
    }
    let token = auth::new_token("hoardadm");
    let line = auth::token_line(args.access, &args.name, &token);
    match &args.file {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| anyhow!("cannot open {}: {e}", path.display()))?;
            f.write_all(format!("{line}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!(
                "hoard: {} token {:?} added to {}; it is shown once, below",
                args.access,
                args.name,
                path.display()
            );
        }
        None => eprintln!("hoard: add this line to the token file ([admin] tokens):\n{line}"),
    }
    outln!("{token}")?;
    Ok(ExitCode::SUCCESS)
}
