//! Every metric Hoard exports, with its help text: one place to read them, registered at start so that
//! dashboards and alerts see a series (at zero) before the first event.

/// What kind of series a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

use Kind::*;

/// (name, kind, help). Labelled series (per disk, per state) appear once their subject exists.
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "hoard_build_info",
        Gauge,
        "Always 1; the version label names the build.",
    ),
    (
        "hoard_frontend_put_seconds",
        Histogram,
        "Put latency, from the whole block received to the answer.",
    ),
    (
        "hoard_frontend_put_bytes_total",
        Counter,
        "Bytes of blocks stored through this frontend.",
    ),
    (
        "hoard_frontend_put_retries_total",
        Counter,
        "Put attempts that failed on one volume and moved to another.",
    ),
    (
        "hoard_frontend_dedup_hits_total",
        Counter,
        "Puts answered at once because the block was stored already.",
    ),
    ("hoard_frontend_get_seconds", Histogram, "Get latency."),
    (
        "hoard_frontend_hedged_reads_total",
        Counter,
        "Whole-block reads raced by a read of every member after the learned delay.",
    ),
    (
        "hoard_frontend_get_bytes_total",
        Counter,
        "Bytes read by clients.",
    ),
    (
        "hoard_frontend_degraded_reads_total",
        Counter,
        "Reads that needed parity because a member was down, slow or corrupt.",
    ),
    (
        "hoard_frontend_hash_mismatches_total",
        Counter,
        "Whole-block reads whose bytes did not hash to their key (answered DATA_LOSS).",
    ),
    (
        "hoard_frontend_raw_read_mismatches_total",
        Counter,
        "Whole-block raw reads whose bytes did not match the hash (read again through the checked path).",
    ),
    (
        "hoard_delete_results_total",
        Counter,
        "Blocks named by deletes, by result: deleted, kept, already_deleted, not_found.",
    ),
    (
        "hoard_undelete_results_total",
        Counter,
        "Blocks named by undeletes, by result: restored, not_deleted, not_found.",
    ),
    (
        "hoard_dead_bytes",
        Gauge,
        "Bytes of deleted blocks whose rows still point into volumes in service.",
    ),
    (
        "hoard_compaction_donor",
        Gauge,
        "The volume compaction is emptying; 0 when none.",
    ),
    (
        "hoard_compaction_moved_bytes_total",
        Counter,
        "Block bytes compaction moved out of donors and re-pointed.",
    ),
    (
        "hoard_compaction_moved_blocks_total",
        Counter,
        "Blocks compaction moved and re-pointed.",
    ),
    (
        "hoard_compaction_dropped_blocks_total",
        Counter,
        "Rows of blocks deleted past their grace removed by compaction.",
    ),
    (
        "hoard_compaction_reclaimed_bytes_total",
        Counter,
        "Block bytes of the rows compaction removed: the dead bytes reclaimed.",
    ),
    (
        "hoard_compaction_volumes_total",
        Counter,
        "Donors compaction emptied, inspected and retired.",
    ),
    (
        "hoard_trash_halted",
        Gauge,
        "1 while meta halts every trash unlink (a failed inspection, or an extent unlinked without a clearance).",
    ),
    (
        "hoard_trash_entries",
        Gauge,
        "Trashed extents the volume servers report, by state: cleared (meta's clearance issued) or waiting.",
    ),
    (
        "hoard_trash_clearances_total",
        Counter,
        "Trash entries the inspector cleared for unlinking.",
    ),
    (
        "hoard_trash_unlinks_total",
        Counter,
        "Cleared trash entries that vanished from their disk: unlinked as meant.",
    ),
    (
        "hoard_extent_unlinks_without_clearance_total",
        Counter,
        "Trash entries that vanished from a healthy disk with no clearance from meta.",
    ),
    (
        "hoard_trash_inspection_violations_total",
        Counter,
        "Trash inspections that found index rows still pointing into a trashed extent.",
    ),
    (
        "hoard_compactor_moved_bytes_total",
        Counter,
        "Block bytes this compactor copied and re-pointed.",
    ),
    (
        "hoard_watcher_checks_total",
        Counter,
        "Read-back checks of stored blocks, by result.",
    ),
    (
        "hoard_watcher_pending",
        Gauge,
        "Blocks waiting for a read-back check.",
    ),
    (
        "hoard_watcher_dropped_total",
        Counter,
        "Blocks not watched because the watcher was full.",
    ),
    (
        "hoard_volume_append_bytes_total",
        Counter,
        "Fragment bytes written by appends.",
    ),
    (
        "hoard_volume_read_bytes_total",
        Counter,
        "Fragment bytes read for clients.",
    ),
    (
        "hoard_volume_disk_full_total",
        Counter,
        "Writes refused because a disk's filesystem was full (ENOSPC or a quota); the disk is not failed.",
    ),
    (
        "hoard_admin_refused_total",
        Counter,
        "Admin API requests refused, by why: no_token, unknown_token, viewer (a viewer token's change).",
    ),
    (
        "hoard_volume_raw_read_bytes_total",
        Counter,
        "Fragment bytes of those sent by raw reads (sendfile, no gRPC).",
    ),
    (
        "hoard_volume_raw_append_bytes_total",
        Counter,
        "Fragment bytes of those appended by raw appends (no gRPC).",
    ),
    (
        "hoard_frontend_raw_put_bytes_total",
        Counter,
        "Block bytes of those stored by raw puts (the Rust client's path; no gRPC).",
    ),
    (
        "hoard_frontend_raw_connections",
        Gauge,
        "Raw put connections being served (at most 1024; more wait for a slot).",
    ),
    (
        "hoard_frontend_raw_waits_total",
        Counter,
        "Puts that waited for room: label `for` is `connection` (raw connection slots) or `put_memory` (the 256 MiB of blocks in memory, raw and gRPC puts together).",
    ),
    (
        "hoard_listener_refused_total",
        Counter,
        "Connections closed before they were served: label `why` is `handshake` (no HTTP/2 preface or raw header within 5 s), `handshakes` (too many still showing it), `not_http2`, `raw_per_peer`, `raw_connections`, `grpc_per_peer`, `grpc_connections` or `admin_connections`.",
    ),
    (
        "hoard_meta_heartbeats_refused_total",
        Counter,
        "Heartbeats (label `why` = `address`) or disks in heartbeats (`disk`) refused because a live server answers for that node or disk at its recorded address.",
    ),
    (
        "hoard_volume_raw_connections",
        Gauge,
        "Raw fragment connections being served (at most 1024; more wait for a slot).",
    ),
    (
        "hoard_volume_raw_waits_total",
        Counter,
        "Raw requests that waited for room: label `for` is `connection` (connection slots) or `append_memory` (the 256 MiB of appended fragments in memory).",
    ),
    (
        "hoard_volume_fragment_crc_failures_total",
        Counter,
        "Fragment reads that failed their crc32c.",
    ),
    (
        "hoard_volume_repair_read_bytes_total",
        Counter,
        "Bytes read by peers rebuilding members.",
    ),
    (
        "hoard_volume_rebuilt_bytes_total",
        Counter,
        "Bytes of members rebuilt by this server.",
    ),
    (
        "hoard_scrub_bytes_total",
        Counter,
        "Bytes read back and checked by scrub.",
    ),
    (
        "hoard_scrub_bad_ranges_total",
        Counter,
        "Corrupt fragments found by scrub.",
    ),
    (
        "hoard_scrub_index_damage_total",
        Counter,
        "Damaged .idx record slots found by scrub.",
    ),
    (
        "hoard_scrub_pass_age_seconds",
        Gauge,
        "Time since a disk's last complete scrub pass (0: none yet).",
    ),
    (
        "hoard_meta_commit_seconds",
        Histogram,
        "Latency of one group commit of the block index (synced).",
    ),
    (
        "hoard_meta_commit_batch_size",
        Histogram,
        "Blocks per group commit.",
    ),
    (
        "hoard_meta_volumes_created_total",
        Counter,
        "Volumes created.",
    ),
    ("hoard_meta_volumes", Gauge, "Volumes by state."),
    (
        "hoard_meta_nodes",
        Gauge,
        "Volume servers by state (up, down).",
    ),
    ("hoard_meta_blocks", Gauge, "Blocks in the index."),
    (
        "hoard_meta_stored_bytes",
        Gauge,
        "Bytes of the blocks in the index.",
    ),
    (
        "hoard_disk_used_bytes",
        Gauge,
        "Bytes of extents on a disk.",
    ),
    ("hoard_disk_capacity_bytes", Gauge, "Capacity of a disk."),
    (
        "hoard_disk_trash_bytes",
        Gauge,
        "Bytes of retired extents in a disk's trash, deleted after the trash grace period.",
    ),
    (
        "hoard_disk_fill_ratio",
        Gauge,
        "Used share of a disk's capacity: by its extents, or by its filesystem when that is fuller (something else fills it).",
    ),
    (
        "hoard_disk_failed",
        Gauge,
        "1 when a disk reports a failure.",
    ),
    (
        "hoard_disk_slow",
        Gauge,
        "1 while a disk's server finds its synced writes slower than slow_disk: no new members go there.",
    ),
    (
        "hoard_volume_disk_probe_seconds",
        Histogram,
        "One latency probe of a disk: a 4 KiB write and fdatasync, once a second.",
    ),
    (
        "hoard_repair_queue_volumes",
        Gauge,
        "Volumes waiting for repair, by priority (members lost).",
    ),
    (
        "hoard_repair_volumes_degraded",
        Gauge,
        "Volumes below full redundancy that can be repaired.",
    ),
    (
        "hoard_repair_volumes_lost",
        Gauge,
        "Volumes with more than m members lost.",
    ),
    (
        "hoard_repair_oldest_degraded_seconds",
        Gauge,
        "How long the longest-degraded volume has been below full redundancy.",
    ),
    (
        "hoard_repair_window_of_vulnerability_seconds",
        Histogram,
        "Time volumes spent below full redundancy, recorded when they are whole again.",
    ),
    (
        "hoard_repair_bytes_total",
        Counter,
        "Bytes of members rebuilt and committed.",
    ),
    (
        "hoard_repair_rebuilt_bytes",
        Gauge,
        "Bytes of members rebuilt over the cell's life.",
    ),
    (
        "hoard_repair_volumes_total",
        Counter,
        "Volume repairs committed.",
    ),
    (
        "hoard_repair_rebuild_rate_bytes_per_second",
        Gauge,
        "Rebuilt bytes per second over the last minute.",
    ),
    (
        "hoard_repair_running",
        Gauge,
        "Rebuilds the repair daemon is running.",
    ),
    (
        "hoard_repair_lease_held",
        Gauge,
        "1 while this repair daemon holds meta's repair lease, 0 while it stands by.",
    ),
    (
        "hoard_meta_repair_lease_changes_total",
        Counter,
        "Times the repair lease went to another daemon (or was taken after a restart).",
    ),
    (
        "hoard_repair_paused",
        Gauge,
        "1 while repair is paused by an operator.",
    ),
    (
        "hoard_repair_ranges_queued",
        Gauge,
        "Corrupt fragments waiting for range repair.",
    ),
    (
        "hoard_repair_ranges_reported_total",
        Counter,
        "Corrupt fragments reported (reads, scrub).",
    ),
    (
        "hoard_repair_ranges_repaired_total",
        Counter,
        "Corrupt fragments rewritten in place.",
    ),
];

/// Describes every metric and creates its unlabelled series at zero.
pub fn register_all() {
    for (name, kind, help) in METRICS {
        match kind {
            Counter => {
                metrics::describe_counter!(*name, *help);
                if *name == "hoard_watcher_checks_total" {
                    metrics::counter!(*name, "result" => "ok").increment(0);
                    metrics::counter!(*name, "result" => "failed").increment(0);
                } else if *name == "hoard_delete_results_total" {
                    for r in ["deleted", "kept", "already_deleted", "not_found"] {
                        metrics::counter!(*name, "result" => r).increment(0);
                    }
                } else if *name == "hoard_undelete_results_total" {
                    for r in ["restored", "not_deleted", "not_found"] {
                        metrics::counter!(*name, "result" => r).increment(0);
                    }
                } else {
                    metrics::counter!(*name).increment(0);
                }
            }
            Gauge => {
                metrics::describe_gauge!(*name, *help);
                // Labelled gauges appear with their subjects.
                if !matches!(
                    *name,
                    "hoard_build_info"
                        | "hoard_meta_volumes"
                        | "hoard_meta_nodes"
                        | "hoard_repair_queue_volumes"
                        | "hoard_scrub_pass_age_seconds"
                ) && !name.starts_with("hoard_disk_")
                {
                    metrics::gauge!(*name).increment(0.0);
                }
            }
            Histogram => {
                metrics::describe_histogram!(*name, *help);
                let _ = metrics::histogram!(*name);
            }
        }
    }
}
