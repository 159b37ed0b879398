//! The cell's scrub knobs and the scrub status volume servers report. Scrubbing itself runs on the
//! volume servers; meta keeps the knobs (durably) and hands them out with every heartbeat answer.

use hoard_proto::v1;
use hoard_types::now_ms;

use crate::MetaError;
use crate::engine::Cf;
use crate::records::{ScrubKnobsRow, encode};
use crate::state::MetaState;

pub const KEY_SCRUB_KNOBS: &[u8] = b"scrub_knobs";

/// Defaults: a full pass every 14 days per disk, at most 32 MiB/s per disk.
pub fn default_knobs() -> ScrubKnobsRow {
    ScrubKnobsRow {
        paused: false,
        bytes_per_sec: 32 << 20,
        interval_secs: 14 * 24 * 3600,
        start_requested_unix_ms: 0,
    }
}

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

impl MetaState {
    pub fn scrub_knobs(&self) -> v1::ScrubKnobs {
        knobs_message(&self.cell_lock().scrub_knobs)
    }

    pub fn set_scrub(&self, c: ScrubChange) -> Result<v1::ScrubKnobs, MetaError> {
        if let Some(i) = c.interval_secs
            && !(1..=10 * 365 * 86_400).contains(&i)
        {
            return Err(MetaError::Invalid(format!(
                "scrub interval of {i} s: it must be 1 second to 10 years"
            )));
        }
        self.mutate_cell(true, |cell, b| {
            let k = &mut cell.scrub_knobs;
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
            b.put(Cf::Config, KEY_SCRUB_KNOBS, encode(&*k));
            tracing::info!(knobs = ?k, "scrub knobs changed");
            knobs_message(k)
        })
    }

    /// The last scrub status every disk reported, with its node.
    pub fn scrub_status(&self) -> Vec<(String, String, v1::ScrubStatus)> {
        let cell = self.cell_lock();
        cell.disks
            .iter()
            .map(|(id, d)| {
                (
                    id.clone(),
                    d.node_id.clone(),
                    cell.scrub.get(id).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }
}

impl MetaState {
    /// An operator declares a held disk's unknown contents abandoned: it may take new members, and a
    /// disk labelled for another cluster is relabelled for this one.
    pub fn declare_disk_empty(&self, disk_id: &str) -> Result<(), MetaError> {
        self.mutate_cell(true, |cell, b| {
            let d = cell
                .disks
                .get_mut(disk_id)
                .ok_or_else(|| MetaError::Invalid(format!("no disk {disk_id}")))?;
            d.declared_empty = true;
            d.hold.clear();
            b.put(Cf::Disks, disk_id.as_bytes().to_vec(), encode(&*d));
            tracing::warn!(disk = disk_id, "disk declared empty by an operator");
            Ok(())
        })?
    }
}

/// `1.5 GiB`-style rendering of a byte count, for messages.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
