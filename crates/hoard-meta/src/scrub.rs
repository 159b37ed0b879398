//! The cell's scrub knobs and the scrub status volume servers report. Scrubbing itself runs on the
//! volume servers; meta keeps the knobs (durably) and hands them out with every heartbeat answer.

use std::sync::Arc;

use hoard_proto::v1;
use hoard_types::now_ms;

use crate::MetaError;
use crate::core::Core;
use crate::rows::ScrubKnobsRow;
use crate::schema::{self, ConfigKey};

pub fn knobs_message(k: &ScrubKnobsRow) -> v1::ScrubKnobs {
    v1::ScrubKnobs {
        paused: k.paused,
        bytes_per_sec: k.bytes_per_sec,
        interval_secs: k.interval_secs,
        start_requested_unix_ms: k.start_requested_unix_ms,
    }
}

/// A change to the scrub knobs; unset fields stay.
#[derive(Default, Debug)]
pub struct ScrubChange {
    pub paused: Option<bool>,
    pub bytes_per_sec: Option<u64>,
    pub interval_secs: Option<u64>,
    pub start: bool,
}

/// The scrub knobs and reports.
pub struct Scrub {
    core: Arc<Core>,
}

impl Scrub {
    pub(crate) fn new(core: Arc<Core>) -> Scrub {
        Scrub { core }
    }

    pub fn knobs(&self) -> v1::ScrubKnobs {
        knobs_message(&self.core.lock().scrub_knobs)
    }

    pub fn set(&self, c: ScrubChange) -> Result<v1::ScrubKnobs, MetaError> {
        if let Some(i) = c.interval_secs
            && !(1..=10 * 365 * 86_400).contains(&i)
        {
            return Err(MetaError::Invalid(format!(
                "scrub interval of {i} s: it must be 1 second to 10 years"
            )));
        }
        self.core.mutate(true, |t, b| {
            let k = &mut t.scrub_knobs;
            if let Some(p) = c.paused {
                k.paused = p;
            }
            if let Some(r) = c.bytes_per_sec {
                k.bytes_per_sec = r;
            }
            if let Some(i) = c.interval_secs {
                k.interval_secs = i;
            }
            if c.start {
                k.start_requested_unix_ms = now_ms();
                k.paused = false;
            }
            schema::put_config(b, ConfigKey::ScrubKnobs, &*k);
            tracing::info!(knobs = ?k, "scrub knobs changed");
            knobs_message(k)
        })
    }

    /// The last scrub status every disk reported, with its node.
    pub fn status(&self) -> Vec<(String, String, v1::ScrubStatus)> {
        let t = self.core.lock();
        t.disks
            .iter()
            .map(|(id, d)| {
                (
                    id.clone(),
                    d.node_id.clone(),
                    t.scrub.get(id).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }
}
