//! `hoard admin workers`: the background jobs of one process, and their controls.

use std::process::ExitCode;

use hoard_admin::AdminClient;
use hoard_admin::api::*;

use super::{WorkersCmd, render, show};

/// The action and body a workers command posts; `None` for the listing.
pub fn request(cmd: &WorkersCmd) -> Option<(&'static str, WorkerRequest)> {
    let ask = |name: &String| WorkerRequest {
        name: name.clone(),
        bytes_per_sec: None,
    };
    match cmd {
        WorkersCmd::List => None,
        WorkersCmd::Pause { name } => Some(("pause", ask(name))),
        WorkersCmd::Resume { name } => Some(("resume", ask(name))),
        WorkersCmd::Cancel { name } => Some(("cancel", ask(name))),
        WorkersCmd::Throttle {
            name,
            bytes_per_sec,
        } => Some((
            "throttle",
            WorkerRequest {
                bytes_per_sec: Some(*bytes_per_sec),
                ..ask(name)
            },
        )),
    }
}

pub async fn run(api: &AdminClient, json: bool, cmd: &WorkersCmd) -> anyhow::Result<ExitCode> {
    let ws: Vec<WorkerView> = match request(cmd) {
        None => api.get("/api/v1/workers").await?,
        Some((action, body)) => {
            api.post(&format!("/api/v1/workers/{action}"), &body)
                .await?
        }
    };
    let now = hoard_types::now_ms();
    show(json, &ws, |ws| render::workers(ws, now))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_post_the_action_with_the_name() {
        assert!(request(&WorkersCmd::List).is_none());
        let (action, body) = request(&WorkersCmd::Pause {
            name: "scrub".into(),
        })
        .unwrap();
        assert_eq!(
            (action, body.name.as_str(), body.bytes_per_sec),
            ("pause", "scrub", None)
        );
        let (action, body) = request(&WorkersCmd::Throttle {
            name: "repair".into(),
            bytes_per_sec: 0,
        })
        .unwrap();
        assert_eq!((action, body.bytes_per_sec), ("throttle", Some(0)));
    }
}
