//! Standard output for commands that people pipe into other tools.
//!
//! Rust's `println!` panics when stdout is a closed pipe (`hoard admin disks | head -1`). Commands write
//! through [`outln!`] and [`out!`] instead, which hand the error back; `main` ends a command whose stdout
//! was closed quietly, killed by SIGPIPE as other Unix tools are (status 141 in a shell).

/// `println!` to stdout that returns the write error instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` to stdout that returns the write error instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// True when `e` (or one of its causes) is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Ends the process as a Unix tool whose reader went away: by SIGPIPE, with its default action.
pub fn die_of_sigpipe() -> ! {
    // SAFETY: restoring a signal's default disposition and raising it in this process; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Not reached: SIGPIPE's default action ends the process. The status a shell would show otherwise.
    std::process::exit(128 + libc::SIGPIPE)
}
